"""The job engine's rate limiter: one vendor quota per (vendor app, operation
key), held across every worker process through Redis, or inside one process
when no Redis is configured (embedded mode).

The algorithm is a shared schedule of send times. Vendors count calls in
fixed one-second windows (the sandboxes do exactly that), so no epoch second
ever gets more than the rate in calls (weight units), and the calls are
spread evenly over the middle of each second, [s + guard, s + 1 - guard]:
GCRA with no burst, in a time that skips the guard bands. A call sent a
little late, or arriving after a network delay under `guard`, still lands in
the window it was counted in, so jitter needs no margin of calls and the
quota can be used in full. When the schedule has no backlog and callers are
well below the rate (both windows under (1 - 2 x guard) of it), a call may
also go inside a guard band, paced at the rate and counted in both windows
it may land in: otherwise a process that cannot reach the rate idles through
2 x guard of every second (about a quarter of its throughput at guard 0.15,
measured by bench/overhead); a vendor with sliding or unaligned windows still
sees about the rate in any one second, and `margin` covers that "about".
Plain GCRA needs a margin instead: with 0-30 ms of jitter it drew over-limit
replies at margin 0 and used 0.98 of R at margin 0.01; this used 1.00.

A reservation is one Redis round trip (a Lua script on Redis's own clock)
that takes the next free slots and says how long to wait for each. Inside a
process the calls waiting for a key are reserved together, HORIZON's worth
of them at a time (one round trip per call capped a process near 1,000
calls/s and doubled its CPU per call), and the next reservation waits until
the last slot is HORIZON away, so the schedule never runs far ahead of now: a
pause from `slow_down` reaches every process soon, and a process that dies
wastes few slots. In embedded mode with no backlog a call's reservation also
takes a few spare slots for the process's next calls (`_Spares`), so the
shared file's lock is taken once per batch of calls, not per call. The slot
times themselves smooth each process's calls; aiolimiter is
not used: alone it lost 0.06-0.09 of the quota here (a leaky bucket never
makes up a late wake-up) and it cannot see the vendor's windows.

Urgent calls (`urgent`: the bridge's relays) go ahead across processes too:
one takes the earliest place in a window with room, ahead of the slots
other processes booked, and while urgent calls were seen lately the others
leave room in each window for them (workers/slot_scripts.py). Before,
the urgent lane ordered one process's waiting calls only, and a bulk job
in another process kept the shared schedule booked ahead of the relays
(bench/README.md, bridge).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..vendors.client import Throttle
from .shared_slots import SharedSlots
from .slot_scripts import (CLOCK_SLACK, MIN_FACTOR, RESERVE, SLOW_DOWN, STALE_AHEAD, URGENT_HEADROOM,
                           URGENT_MOST, URGENT_TAU)
from .window_caps import Caps, WindowCaps

if TYPE_CHECKING:
    from redis.asyncio import Redis

HORIZON = 0.1  # seconds: how far ahead of its slot a process reserves
# Embedded mode with no backlog: one reservation also takes spare slots for
# this process's next calls, at most SPARE_SECONDS of the rate (none below
# 50 calls/s) and SPARES_MAX, so the shared file's lock is taken once per
# batch of calls, not per call (a call's limiter cost with a shared file:
# 16 -> 5 us; in-process alone 7.6 -> 3.5 us).
SPARE_SECONDS = 0.02
SPARES_MAX = 32
CUT = 0.9  # rate factor after an over-limit reply
RECOVER = 0.02  # factor regained per second (0.9 -> 1.0 in 5 s)
DEFAULT_PAUSE = 1.0  # seconds, when the vendor gives no Retry-After
REDIS_ATTEMPTS = 4  # a script call is tried again after 0.1, 0.2, 0.4 s

@dataclass
class _Slots:
    """The embedded (one process) schedule for one key: `RESERVE` (workers/slot_scripts.py) in Python."""

    win: int = 0
    pos: float = 0.0
    cw: int = 0
    cn: int = 0
    cn1: int = 0
    bnext: float = 0.0
    paused: float = 0.0
    factor: float = 1.0
    fat: float = 0.0
    cut: float = 0.0
    unext: float = 0.0  # the earliest time of the next urgent call in a window's middle
    urate: float = 0.0  # urgent units a second lately, as of `uat`
    uat: float = 0.0

    def _factor(self, now: float) -> float:
        # never below: a write from a clock a little ahead must not cut the rate
        return min(1.0, self.factor + max(0.0, now - self.fat) * RECOVER)

    def forget_if_stale(self, now: float, need: float, guard: float) -> None:
        """Start afresh when the schedule was written on a clock ahead of this
        one, or holds slots further ahead than the rate explains (`need`: the
        seconds the weight about to be reserved takes at the rate); see
        workers/slot_scripts.py. Otherwise a command run with its clock ahead
        leaves slots in the future that hold every later call back."""
        factor = min(max(self.factor, MIN_FACTOR), 1.0)
        ahead = max(self.next_slot(guard), self.unext) - now
        if self.fat <= now + CLOCK_SLACK and ahead <= (STALE_AHEAD + need) / factor:
            return
        self.win, self.pos, self.cw, self.cn, self.cn1, self.bnext, self.cut = 0, 0.0, 0, 0, 0, 0.0, 0.0
        self.unext, self.urate, self.uat = 0.0, 0.0, 0.0
        if self.paused > now + STALE_AHEAD:
            self.paused = 0.0
        self.factor, self.fat = factor, now

    def _used(self, window: int) -> float:
        if window == self.cw:
            return self.cn
        if window == self.cw + 1:
            return self.cn1
        return 0 if window > self.cw + 1 else math.inf  # an old window: never reopened

    def _count(self, window: int, units: int) -> None:
        if window > self.cw + 1:
            self.cn = self.cn1 if window - 1 == self.cw + 1 else 0
            self.cn1, self.cw = 0, window - 1
        if window == self.cw:
            self.cn += units
        elif window == self.cw + 1:
            self.cn1 += units

    def urgent_rate(self, now: float) -> float:
        return self.urate * math.exp(-max(0.0, now - self.uat) / URGENT_TAU)

    def reserve(self, now: float, limit: float, rate: float, weight: int,
                guard: float, urgent: bool = False) -> tuple[float, float]:
        self.factor, self.fat = self._factor(now), now
        cap = math.floor(limit * self.factor + 1e-9)
        earliest = max(now, self.paused)
        if urgent:
            self.urate, self.uat = self.urgent_rate(now) + weight / URGENT_TAU, now
        es = math.floor(earliest)
        ef = earliest - es
        # With no backlog, a call may go inside the guard band around the
        # boundary b, paced at the rate, counted in both windows it may land
        # in, and only while both stay under the share of the rate that fits
        # in their middles (callers well below the rate): a full window with
        # calls at its edges has no slack left for its neighbours' late
        # calls (bench quota, one process: 13-49 over-limit replies when band
        # calls could fill windows to the rate, 0 in 5 runs since).
        b = es if ef < guard else es + 1 if ef >= 1 - guard else None
        band_room = math.floor(rate * self.factor * (1 - 2 * guard) + 1e-9)
        if b is not None and weight <= band_room and (urgent or (self.win, self.pos) <= (b, 0.0)):
            at = max(earliest, self.bnext)
            if at < b + guard and max(self._used(b - 1), self._used(b)) + weight <= band_room:
                self._count(b - 1, weight)
                self._count(b, weight)
                self.bnext = at + weight / (rate * self.factor)
                return at - now, b + 1 - guard / 2 - now
        if urgent:
            return self._urgent(now, earliest, cap, rate, weight, guard)
        # The other calls leave room in each window for the urgent calls
        # still to come in it, paced at the rate their mean leaves.
        u = self.urgent_rate(now)
        u = u if u >= 1 else 0.0
        pace = rate * self.factor * (1 - min(u / cap, URGENT_MOST)) if cap > 0 else rate * self.factor
        ep = min(max((ef - guard) / (1 - 2 * guard), 0.0), 1.0)
        if ep >= 1:
            es, ep = es + 1, 0.0
        if (self.win, self.pos) < (es, ep):
            self.win, self.pos = es, ep
        used = self._used(self.win)
        # a call heavier than a window goes alone
        while used > 0 and used + weight + self._room(u, self.win + 1 - guard - now, cap) > cap:
            self.win, self.pos = self.win + 1, 0.0
            used = self._used(self.win)
        start_win, start_pos = self.win, self.pos
        self._count(start_win, weight)
        self.pos += weight / pace
        if self.pos >= 1:
            whole = math.floor(self.pos)
            self.win, self.pos = self.win + whole, self.pos - whole
        delay = start_win + guard + start_pos * (1 - 2 * guard) - now
        return delay, start_win + 1 - guard / 2 - now

    def _urgent(self, now: float, earliest: float, cap: int, rate: float, weight: int,
                guard: float) -> tuple[float, float]:
        """An urgent call's slot in a window's middle: the earliest window
        with room for it, however far the other calls have booked ahead;
        urgent calls are paced at the rate among themselves."""
        at = max(earliest, self.unext)
        window = math.floor(at)
        at -= window
        if at < guard:
            at = guard
        elif at >= 1 - guard:
            window, at = window + 1, guard
        while True:
            # windows a heavy call's debt spans (between the last counted and the
            # schedule's next place) are full
            used = math.inf if self.cw + 1 < window < self.win else self._used(window)
            if used == 0 or used + weight <= cap:
                break
            window, at = window + 1, guard
        self._count(window, weight)
        self.unext = window + at + weight * (1 - 2 * guard) / (rate * self.factor)
        return window + at - now, window + 1 - guard / 2 - now

    @staticmethod
    def _room(u: float, seconds: float, cap: int) -> int:
        """Room for the urgent calls arriving in the next `seconds` (at most
        a window's second) at `u` a second: their mean and URGENT_HEADROOM x
        its square root (they vary about that much), at most URGENT_MOST of
        the limit."""
        mean = u * min(max(0.0, seconds), 1.0)
        return min(math.floor(mean + URGENT_HEADROOM * math.sqrt(mean)), math.floor(cap * URGENT_MOST))

    def next_slot(self, guard: float) -> float:
        """The epoch time of the next free place in the windows' middles."""
        return self.win + guard + self.pos * (1 - 2 * guard)

    def slow_down(self, now: float, pause: float) -> None:
        self.forget_if_stale(now, 0.0, 0.0)
        factor = self._factor(now)
        if now - self.cut >= max(pause, 1.0):
            factor, self.cut = max(MIN_FACTOR, factor * CUT), now
        self.factor, self.fat = factor, now
        self.paused = max(self.paused, now + pause)


@dataclass
class _Spares:
    """Slots of weight 1 an embedded reservation took beyond its caller's,
    handed to this process's next calls in order. Each stays usable until
    HORIZON after its slot (or its window's `latest`, if sooner): a spare
    never goes out later than a batched reservation would. How many the
    next reservation takes follows use: twice as many (and one) while all
    get used, as many as were used once some expire, so a process with few
    calls holds few slots nobody else can have."""

    slots: deque = field(default_factory=deque)  # (slot, use by) in loop time
    size: int = 1
    given: int = 0
    expired: int = 0

    def take(self, now: float) -> tuple[float, float] | None:
        slots = self.slots
        while slots:
            slot, until = slots.popleft()
            if now <= until:
                self.given += 1
                return slot, until
            self.expired += 1
        return None

    def next_size(self, most: int) -> int:
        """How many spares the reservation being made takes (the pool is empty)."""
        self.size = min(most, self.given if self.expired else 2 * self.size + 1)
        self.given = self.expired = 0
        return self.size


class _Local:
    """An in-process schedule, used like a SharedSlots: `with schedule as slots`."""

    def __init__(self) -> None:
        self.slots = _Slots()

    def __enter__(self) -> _Slots:
        return self.slots

    def __exit__(self, *exc: object) -> None:
        return None

    def peek(self, name: str) -> float:
        return getattr(self.slots, name)


# The defaults, also the settings' (rate_margin, rate_guard). The guard leaves
# this many seconds free at each end of a vendor's one-second window, more
# than the delay before the vendor counts a call plus its jitter (< 0.25), so
# jitter needs no margin; the margin keeps this share of each limit unused
# for vendors whose windows are not the epoch seconds. bench/quota.py with 4
# processes and up to 60 ms of arrival jitter drew 0 over-limit replies at
# 0.005, 0.01 and 0.02 alike (utilisation 0.995 / 0.988 / 0.981).
MARGIN = 0.005
GUARD = 0.15

# Set by a caller whose calls go ahead of the others for the same quota (the
# bridge's live messages before a bulk job's), in this process and in the
# shared schedule (`_Slots._urgent`).
urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("imshift_urgent", default=False)
# The slot the current task's last `acquire` took: (loop time after which it
# is too late to use, a coroutine function taking a new one and returning
# its such time). workers/runtime.py reads it after the work it does between
# the limiter and the send.
last_slot: contextvars.ContextVar[tuple[float, Callable[[], Awaitable[float]]] | None] = \
    contextvars.ContextVar("imshift_last_slot", default=None)


class RateLimiter:
    """Vendor quotas per (app, operation key), in calls (weight units) per second.

    `rates` apply to every app unless `throttle_for` is given the app's own.
    No window ever gets more than the rate; `margin` keeps the long-run rate
    that share under it (for vendors whose windows are not the epoch seconds,
    or that count a little differently). `guard` is the slack, in seconds, at
    each end of a one-second window for send delays and network latency.
    """

    def __init__(self, rates: Mapping[str, float] | None = None, *, redis: Redis | None = None,
                 margin: float = MARGIN, guard: float = GUARD, namespace: str = "imshift:rl",
                 shared_dir: Path | None = None):
        if not 0 <= guard < 0.25 or not 0 <= margin < 1:
            raise ValueError("guard must be in [0, 0.25) seconds and margin in [0, 1)")
        self.rates = {str(k): float(v) for k, v in (rates or {}).items()}
        self.redis = redis  # None: embedded mode
        # Embedded mode: the schedules live in files there, shared by every
        # process on this machine that is given the same folder (None: this process only).
        self.shared_dir = shared_dir
        self._schedules: dict[tuple[str, str], _Local | SharedSlots] = {}
        self._spares: dict[tuple[str, str], _Spares] = {}
        self.margin = margin
        self.guard = guard
        self.namespace = namespace
        self._app_rates: dict[str, dict[str, float]] = {}
        # Longer windows (per hour, per day) per app and key, and whose caps they are.
        self._app_caps: dict[str, dict[str, Caps]] = {}
        self._who: dict[str, str] = {}
        self.window_caps = WindowCaps(redis=redis, shared_dir=shared_dir,
                                      namespace=f"{namespace}:cap")
        # per key: (weight, future, urgent), the urgent ones first
        self._waiting: dict[tuple[str, str], list[tuple[int, asyncio.Future, bool]]] = {}
        self._leaders: dict[tuple[str, str], asyncio.Task] = {}
        self._wake: dict[tuple[str, str], asyncio.Event] = {}  # an urgent call for a resting leader
        if redis is not None:
            self._reserve_script = redis.register_script(RESERVE)
            self._slow_down_script = redis.register_script(SLOW_DOWN)

    def throttle_for(self, app: str, rates: Mapping[str, float] | None = None, *,
                     caps: Mapping[str, Caps] | None = None, who: str | None = None) -> Throttle:
        """The `Throttle` a VendorClient for `app` awaits before each call.
        `caps` are the app's longer windows per key ({"broadcast": {"day": 3}});
        `who` names the app in a refusal ("RongCloud (app rc)")."""
        if rates is not None:
            self._app_rates[app] = {str(k): float(v) for k, v in rates.items()}
        if caps is not None:
            self._app_caps[app] = {str(k): dict(v) for k, v in caps.items() if v}
        self._who[app] = who or app
        return functools.partial(self.acquire, app)  # a call's coroutine is acquire's own

    def limit(self, app: str, key: str) -> float | None:
        """The configured rate of `key` for `app`; None when it is not limited."""
        rate = self._app_rates.get(app, self.rates).get(str(key))
        return rate if rate is not None and rate > 0 else None  # 0: no limit (say, a self-hosted server)

    def caps(self, app: str, key: str) -> Caps:
        """The app's longer-window caps of `key` ({} when it has none)."""
        return self._app_caps.get(app, {}).get(str(key), {})

    async def acquire(self, app: str, key: str, weight: int = 1) -> None:
        """Wait for this call's slot in the app's quota for `key`; raises
        CapReached, at once, when a longer window of `key` is full."""
        key = str(key)
        last_slot.set(None)
        caps = self.caps(app, key)
        if caps and weight > 0:  # counted first: a call the caps refuse takes no slot
            await self.window_caps.take(app, key, caps, weight, self._who.get(app, app))
        limit = self.limit(app, key)
        if limit is None or weight <= 0:
            return
        await self._slot(app, key, limit, weight)

    async def _slot(self, app: str, key: str, limit: float, weight: int) -> float:
        """Wait for a slot; returns the loop time after which it is too late
        (and sets `last_slot`)."""
        loop = asyncio.get_running_loop()
        while True:
            slot, latest = self._take_now(app, key, limit, weight) or \
                await self._take(app, key, limit, weight)
            if slot > loop.time():
                await asyncio.sleep(slot - loop.time())
            # Woken so late (a stalled loop) that the call could land in the
            # next window: give the slot up and take a new one.
            if loop.time() <= latest:
                last_slot.set((latest, functools.partial(self._slot, app, key, limit, weight)))
                return latest

    def _take_now(self, app: str, key: str, limit: float,
                  weight: int) -> tuple[float, float] | None:
        """Embedded mode with no backlog: the slot at once, in loop time, a
        spare one when this process holds one. Going through `_take` costs
        a future and a leader's turn per call (bench overhead: about 0.04 ms
        of the event loop's CPU per item); the schedule is the same either
        way. Redis mode has no spares: a pause another process sets must
        hold back this process's next call, and only Redis knows of it. An
        urgent call takes its slot here behind the others' backlog and its
        own process's too (one reservation: the shared file's lock, no
        spares), unless the urgent calls have a backlog of their own."""
        hurry = urgent.get()
        waiting = bool(self._waiting.get((app, key)))
        if self.redis is not None or (waiting and not hurry):
            return None
        schedule = self._schedule(app, key)
        spares = self._spares.get((app, key))
        if spares is None:
            spares = self._spares[(app, key)] = _Spares()
        loop = asyncio.get_running_loop()
        if weight == 1 and spares.slots and not waiting:
            # Any process's pause holds the spares back too (read without the lock).
            if schedule.peek("paused") > time.time():
                return None
            spare = spares.take(loop.time())
            if spare is not None:
                return spare
        rate = limit * (1 - self.margin)
        with schedule as slots:
            now = time.time()
            slots.forget_if_stale(now, weight / rate, self.guard)
            backlog = slots.next_slot(self.guard) > now + HORIZON
            if slots.paused > now or slots.unext > now + HORIZON or (backlog and not hurry):
                return None  # a backlog: reserve in HORIZON-sized batches, see `_lead`
            delay, latest = slots.reserve(now, limit, rate, weight, self.guard, hurry)
            more = 0
            if weight == 1 and not backlog and not waiting:
                more = spares.next_size(min(SPARES_MAX, int(limit * SPARE_SECONDS)))
            extra = [slots.reserve(now, limit, rate, 1, self.guard, hurry) for _ in range(more)]
        at = loop.time()
        spares.slots.extend((at + d, at + min(l, max(d, 0.0) + HORIZON)) for d, l in extra)
        return at + delay, at + latest

    async def _take(self, app: str, key: str, limit: float, weight: int) -> tuple[float, float]:
        """(slot, latest) in loop time for one call, reserved together with
        the calls of this process waiting for the same key."""
        waiter = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault((app, key), [])
        if urgent.get():  # behind the other urgent ones, ahead of the rest
            at = next((i for i, (_, _, hurry) in enumerate(waiting) if not hurry), len(waiting))
            waiting.insert(at, (weight, waiter, True))
            wake = self._wake.get((app, key))
            if wake is not None:  # the leader rests while the others' slots are far ahead
                wake.set()
        else:
            waiting.append((weight, waiter, False))
        if (app, key) not in self._leaders:
            self._leaders[(app, key)] = asyncio.ensure_future(self._lead(app, key, limit))
        return await waiter

    async def _lead(self, app: str, key: str, limit: float) -> None:
        """Reserve for the waiting calls, HORIZON's worth of the quota (at
        least one call) per reservation, one reservation at a time, and not before the
        last slot reserved is HORIZON away: the schedule never runs far ahead
        of now, so a pause from `slow_down` reaches every process soon and a
        process that dies wastes few slots."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting[(app, key)]
        try:
            while waiting:
                # Counted in weight, not calls: 150 calls of 100 recipients each
                # booked 10 s of a 1,500/s schedule at once, ahead of every
                # other process's calls (the bridge's among them).
                size, room = 0, limit * HORIZON
                while size < len(waiting) and (size == 0 or room >= waiting[size][0]):
                    room -= waiting[size][0]
                    size += 1
                batch, waiting[:size] = waiting[:size], []
                # Slots are counted from before the round trip: a call then
                # goes out early by at most the round trip (into the guard
                # band), never late by it.
                before = loop.time()
                try:
                    answers = await self._reserve(app, key, limit, [w for w, _, _ in batch],
                                                  sum(hurry for _, _, hurry in batch))
                except BaseException as exc:
                    for _, waiter, _ in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, waiter, _), (delay, latest) in zip(batch, answers, strict=True):
                    if not waiter.done():  # a cancelled caller leaves its slot unused
                        waiter.set_result((before + delay, before + latest))
                now = loop.time()
                ahead = before + max(delay for delay, _ in answers) - HORIZON - now
                # Urgent calls wait for the others' slots only; with a backlog
                # of their own they are reserved HORIZON at a time too.
                hurried = max((before + delay - HORIZON - now
                               for (_, _, hurry), (delay, _) in zip(batch, answers, strict=True) if hurry),
                              default=0.0)
                if hurried > 0:
                    await asyncio.sleep(hurried)
                elif ahead > 0 and not (waiting and waiting[0][2]):
                    wake = self._wake[(app, key)] = asyncio.Event()
                    try:  # an urgent call cuts the rest short
                        await asyncio.wait_for(wake.wait(), ahead)
                    except TimeoutError:
                        pass
                    finally:
                        del self._wake[(app, key)]
        finally:
            for _, waiter, _ in waiting:  # cancelled leader: its waiters must not hang
                if not waiter.done():
                    waiter.cancel()
            waiting.clear()
            del self._leaders[(app, key)]

    async def slow_down(self, app: str, key: str, retry_after: float | None = None) -> None:
        """The vendor said "over the limit": pause every process's calls for
        `key` for retry_after seconds (DEFAULT_PAUSE if None) and cut the rate
        to CUT times itself; it regains RECOVER of the full rate per second."""
        key = str(key)
        pause = DEFAULT_PAUSE if retry_after is None else max(0.0, retry_after)
        if self.redis is None:
            with self._schedule(app, key) as slots:
                slots.slow_down(time.time(), pause)
            spares = self._spares.get((app, key))
            if spares is not None:  # reserved before the pause: not to be used in it
                spares.slots.clear()
        else:
            await self._run(self._slow_down_script, app, key, RECOVER, pause, MIN_FACTOR, CUT)

    async def _reserve(self, app: str, key: str, limit: float, weights: list[int],
                       hurried: int = 0) -> list[tuple[float, float]]:
        """Per weight, in order: (seconds until its slot, seconds until it is
        too late to use it); the first `hurried` calls are urgent."""
        rate = limit * (1 - self.margin)
        if self.redis is None:
            with self._schedule(app, key) as slots:
                now = time.time()
                slots.forget_if_stale(now, sum(weights) / rate, self.guard)
                return [slots.reserve(now, limit, rate, w, self.guard, i < hurried)
                        for i, w in enumerate(weights)]
        flat = await self._run(self._reserve_script, app, key,
                               RECOVER, limit, rate, self.guard, hurried, *weights)
        return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    def _schedule(self, app: str, key: str) -> _Local | SharedSlots:
        """The embedded schedule of (app, key), `with schedule as slots`:
        this process's, or the file's under its lock."""
        schedule = self._schedules.get((app, key))
        if schedule is None:
            schedule = self._schedules[(app, key)] = (
                _Local() if self.shared_dir is None
                else SharedSlots(self.shared_dir, app, key, _Slots))
        return schedule

    async def _run(self, script, app: str, key: str, *args: float):
        # Both scripts are safe to repeat (at worst a slot goes unused), so a
        # Redis restart or failover costs a retry, not the caller's chunk.
        for attempt in range(REDIS_ATTEMPTS):
            try:
                return await script(keys=[f"{self.namespace}:{app}:{key}"], args=args)
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == REDIS_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)
