"""The embedded rate-limit schedule shared by the processes of one machine.

Without Redis each command runs its own workers, so two commands on the same
vendor app would each take the whole quota. Their schedules meet in a small
file per (app, operation key) in a folder beside the database: a process
locks the file (flock), reads the schedule, reserves its slots and writes it
back. The lock is held for microseconds and released by the kernel if the
process dies, so a killed command never blocks the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import struct
from pathlib import Path
from typing import Callable, Iterator, TypeVar

S = TypeVar("S")


class SharedSlots:
    """`with schedule.locked() as slots:` a `slots_class` instance read from
    the file under an exclusive lock, written back when the block ends."""

    def __init__(self, folder: Path, app: str, key: str, slots_class: Callable[..., S]):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The name is a digest: app and key names may hold any character.
        name = hashlib.sha256(f"{app}\0{key}".encode()).hexdigest()[:32]
        self.fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o600)
        self.slots_class = slots_class
        self.names = [f.name for f in dataclasses.fields(slots_class)]
        self.format = "<" + "d" * len(self.names)
        self.size = struct.calcsize(self.format)

    @contextlib.contextmanager
    def locked(self) -> Iterator[S]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            data = os.pread(self.fd, self.size, 0)
            slots = self.slots_class()
            if len(data) == self.size:
                for name, value in zip(self.names, struct.unpack(self.format, data)):
                    setattr(slots, name, type(getattr(slots, name))(value))
            yield slots
            os.pwrite(self.fd, struct.pack(self.format, *(float(getattr(slots, n)) for n in self.names)), 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)
