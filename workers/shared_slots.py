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
        self.names = [f.name for f in dataclasses.fields(slots_class)]
        self.record = struct.Struct("<" + "d" * len(self.names))
        self.slots = slots_class()  # one object, refilled from the file under each lock
        self.fresh = dict(vars(self.slots))

    @contextlib.contextmanager
    def locked(self) -> Iterator[S]:
        # Called for every vendor call: kept to a lock, a read and a write.
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            data = os.pread(self.fd, self.record.size, 0)
            state = vars(self.slots)
            if len(data) == self.record.size:  # numbers come back as floats: the schedule takes both
                state.update(zip(self.names, self.record.unpack(data)))
            else:
                state.update(self.fresh)
            yield self.slots
            os.pwrite(self.fd, self.record.pack(*(state[n] for n in self.names)), 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)
