"""Caps over longer windows (RongCloud: 2 broadcasts an hour and 3 a day),
held across processes beside the per-second schedule of workers/ratelimit.py.

Windows are fixed: the calendar minute, hour and day in UTC (multiples of
60, 3600 and 86400 epoch seconds). Fixed, because "3 a day" reads as a count
the vendor starts again each day, and a fixed window lets a refusal say
exactly when the next one opens and lets `schedule add` count fires the same
way (jobs/schedule_caps.py). UTC, because no vendor documents the zone of its
day. A vendor that counts its day in another zone may refuse a call these
windows let through: that reply also ends the item failed with the vendor's
words (workers/chunk.py), never sent hours later by surprise.

A call is counted in every window of its caps at once, or in none when one
of them is full; it is counted before it goes, so a process that dies in
between costs the window a place, never lets one call too many through.
With Redis: one script on Redis's clock over a counter per (app, key,
window), which expires with its window. Embedded: a small JSON file per
(app, key) under flock in the folder the per-second schedules share (the
kernel drops the lock of a process that dies), or a dict in one process.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..vendors.vocabulary import PER, WINDOWS, CapReached

if TYPE_CHECKING:
    from redis.asyncio import Redis

REDIS_ATTEMPTS = 4  # as workers/ratelimit.py: again after 0.1, 0.2, 0.4 s
Caps = Mapping[str, int]  # window name ("hour", "day") -> calls allowed in it

# ARGV: the call's weight, then (window seconds, calls allowed) pairs.
# Returns {0} when counted, else {the full pair's number (1-based), when its window ends}.
_TAKE = """
local now = tonumber(redis.call('TIME')[1])
local weight = tonumber(ARGV[1])
local counted = {}
for i = 2, #ARGV, 2 do
  local seconds, calls = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local index = math.floor(now / seconds)
  local key = KEYS[1] .. ':' .. seconds .. ':' .. index
  if tonumber(redis.call('GET', key) or '0') + weight > calls then
    return {i / 2, (index + 1) * seconds}
  end
  counted[#counted + 1] = {key, (index + 1) * seconds - now + 60}
end
for _, k in ipairs(counted) do
  redis.call('INCRBY', k[1], weight)
  redis.call('EXPIRE', k[1], k[2])
end
return {0}
"""


def reason(who: str, key: str, calls: int, per: str, opens_at: float) -> str:
    """The refusal's one line: the cap, whose it is, and when it opens again."""
    when = datetime.fromtimestamp(opens_at, timezone.utc).strftime("%Y-%m-%d %H:%M")
    return (f"{who} allows {calls} {key}{'' if calls == 1 else 's'} {PER[per]}; not sent: "
            f"the next window opens at {when} UTC")


def first_full(counts: Mapping[str, list[int]], caps: Caps, weight: int,
               now: float) -> tuple[str, float] | None:
    """The first cap `weight` more calls would exceed now, with when its
    window ends; None when every window has room. `counts` maps a window
    name to [window index, calls counted in it]."""
    for per, calls in caps.items():
        seconds = WINDOWS[per]
        index = int(now // seconds)
        seen = counts.get(per)
        used = seen[1] if seen and seen[0] == index else 0
        if used + weight > calls:
            return per, (index + 1) * seconds
    return None


def count(counts: dict[str, list[int]], caps: Caps, weight: int, now: float) -> None:
    for per in caps:
        index = int(now // WINDOWS[per])
        seen = counts.get(per)
        counts[per] = [index, (seen[1] if seen and seen[0] == index else 0) + weight]


class WindowCaps:
    """Counts capped calls per (app, operation key) in their windows, in
    Redis, in files under `shared_dir`, or in this process."""

    def __init__(self, *, redis: Redis | None = None, shared_dir: Path | None = None,
                 namespace: str = "imshift:cap"):
        self.redis = redis
        self.shared_dir = shared_dir
        self.namespace = namespace
        self._local: dict[tuple[str, str], dict[str, list[int]]] = {}
        self._script = redis.register_script(_TAKE) if redis is not None else None

    async def take(self, app: str, key: str, caps: Caps, weight: int, who: str) -> None:
        """Count the call in each of its windows, or raise CapReached (and
        count nothing) when one is full."""
        caps = {per: calls for per, calls in caps.items() if calls > 0}  # 0: no cap
        if not caps:
            return
        if self._script is not None:
            args: list[float] = [weight]
            for per, calls in caps.items():
                args += [WINDOWS[per], calls]
            answer = await self._run(self._script, f"{self.namespace}:{app}:{key}", args)
            if int(answer[0]):
                per = list(caps)[int(answer[0]) - 1]
                raise CapReached(reason(who, key, caps[per], per, float(answer[1])))
            return
        full = self._take_embedded(app, key, caps, weight, time.time())
        if full is not None:
            raise CapReached(reason(who, key, caps[full[0]], full[0], full[1]))

    async def _run(self, script, prefix: str, args: list[float]):
        # Tried again after a Redis restart or failover, like the schedule's
        # scripts: a lost reply may count a call twice, never one too few.
        for attempt in range(REDIS_ATTEMPTS):
            try:
                return await script(keys=[prefix], args=args)
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == REDIS_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)

    def _take_embedded(self, app: str, key: str, caps: Caps, weight: int,
                       now: float) -> tuple[str, float] | None:
        if self.shared_dir is None:
            counts = self._local.setdefault((app, key), {})
            full = first_full(counts, caps, weight, now)
            if full is None:
                count(counts, caps, weight, now)
            return full
        self.shared_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = "caps-" + hashlib.sha256(f"{app}\0{key}".encode()).hexdigest()[:32]
        fd = os.open(self.shared_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 1 << 16, 0)
            counts = json.JSONDecoder().raw_decode(raw.decode())[0] if raw.strip() else {}
            full = first_full(counts, caps, weight, now)
            if full is None:
                count(counts, caps, weight, now)
                data = json.dumps(counts).encode()
                os.pwrite(fd, data, 0)  # then cut: a crash between leaves the JSON, then old bytes (raw_decode stops at its end)
                os.ftruncate(fd, len(data))
            return full
        finally:
            os.close(fd)  # releases the lock
