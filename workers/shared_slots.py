"""The embedded rate-limit schedule shared by the processes of one machine.

Without Redis each command runs its own workers, so two commands on the same
vendor app would each take the whole quota. Their schedules meet in a small
file per (app, operation key) in a folder beside the database: a process
locks the file (flock), reads the schedule, reserves its slots and writes it
back. The lock is held for microseconds and released by the kernel if the
process dies, so a killed command never blocks the others.

The file is mapped into memory (mmap, shared): under the lock the record is
read and written in place, so a reservation costs two system calls (lock,
unlock) instead of four. `peek` reads one field without the lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")
_DOUBLE = struct.Struct("<d")


class SharedSlots(Generic[S]):
    """`with schedule as slots:` a `slots_class` instance read from the file
    under an exclusive lock, written back when the block ends."""

    def __init__(self, folder: Path, app: str, key: str, slots_class: type[S]):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The name is a digest: app and key names may hold any character.
        name = hashlib.sha256(f"{app}\0{key}".encode()).hexdigest()[:32]
        self.fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o600)
        self.names = [f.name for f in dataclasses.fields(slots_class)]
        self.record = struct.Struct("<" + "d" * len(self.names))  # numbers come back as floats
        self.slots = slots_class()  # one object, refilled from the file under each lock
        self._state = vars(self.slots)
        self._offsets = {n: 8 * i for i, n in enumerate(self.names)}
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self.fd).st_size < self.record.size:  # a new file: a fresh schedule
                os.pwrite(self.fd, self.record.pack(*(self._state[n] for n in self.names)), 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.map = mmap.mmap(self.fd, self.record.size)

    # Called for every reservation: a lock, a read and a write, nothing more.
    def __enter__(self) -> S:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self._state.update(zip(self.names, self.record.unpack_from(self.map), strict=True))
        except BaseException:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            raise
        return self.slots

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                state = self._state
                self.record.pack_into(self.map, 0, *[state[n] for n in self.names])
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def peek(self, name: str) -> float:
        """One field as the file holds it now, read without the lock (a
        field is one aligned 8-byte word, written whole)."""
        return _DOUBLE.unpack_from(self.map, self._offsets[name])[0]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)
