"""Host failover: use the first healthy host, step to the next on failure,
and come back to the preferred one once its cooldown has passed."""

from __future__ import annotations

import time
from typing import Callable, Sequence


class HostPool:
    def __init__(self, hosts: Sequence[str], *, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not hosts:
            raise ValueError("at least one host is needed")
        self.hosts = [h.rstrip("/") for h in hosts]
        self.cooldown = cooldown
        self._clock = clock
        self._failed_at: dict[str, float] = {}

    def current(self) -> str:
        """The first host not failed within the cooldown; the least recently
        failed one when all are down (something must be tried)."""
        now = self._clock()
        for host in self.hosts:
            failed = self._failed_at.get(host)
            if failed is None or now - failed >= self.cooldown:
                return host
        return min(self.hosts, key=lambda h: self._failed_at[h])

    def failed(self, host: str) -> None:
        self._failed_at[host] = self._clock()

    def succeeded(self, host: str) -> None:
        self._failed_at.pop(host, None)
