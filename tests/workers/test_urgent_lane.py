"""Urgent calls across processes (issue 20, "live traffic first"): the
bridge's relays go ahead of a bulk job in another process that shares the
quota (through Redis or the embedded schedule file), the bulk job takes what
is left, and the two together never pass the limit."""

import asyncio
import json
import math
import subprocess
import sys
import time
from collections import Counter

import pytest
import redis.asyncio as aredis

from imshift.vendors.sandbox.serve import served
from imshift.workers.ratelimit import GUARD, RateLimiter, _Slots, last_slot, urgent
from imshift.workers.runtime import announcing, before_send

from tiny_sandbox import TinySandbox, hammer


# -- the schedule itself, on a simulated clock --------------------------------------------

def run_mixed(limit, seconds, urgent_rate, urgent_until=math.inf, bulk_weight=1, guard=0.15,
              margin=0.005):
    """One schedule shared by a bulk caller that books HORIZON (0.1 s) ahead
    whenever it has no more than that booked (as `RateLimiter._lead` does)
    and urgent calls arriving evenly at `urgent_rate` a second until
    `urgent_until`, each reserved as it arrives. Returns (start, weight,
    urgent, waited) per call."""
    slots, t0 = _Slots(), 1000.0
    rate = limit * (1 - margin)
    calls, booked, now, step = [], t0, t0, 0.001
    next_urgent = t0 + 0.0005
    while now < t0 + seconds:
        if urgent_rate and next_urgent <= now and now < t0 + urgent_until:
            delay, latest = slots.reserve(now, limit, rate, 1, guard, urgent=True)
            assert 0 <= max(delay, 0) <= latest
            calls.append((now + max(delay, 0), 1, True, max(delay, 0)))
            next_urgent += 1 / urgent_rate
        while booked <= now + 0.1:
            delay, latest = slots.reserve(now, limit, rate, bulk_weight, guard)
            calls.append((now + max(delay, 0), bulk_weight, False, max(delay, 0)))
            booked = now + max(delay, 0)
        now += step
    return calls


def worst_windows(calls, guard):
    """Per window, every call that may land in it when it reaches the vendor
    up to `guard` early or late."""
    counts = Counter()
    for start, weight, _, _ in calls:
        for window in {math.floor(start - guard), math.floor(start + guard)}:
            counts[window] += weight
    return counts


@pytest.mark.parametrize("limit, urgent_rate, bulk_weight", [
    (1500, 100, 100), (1500, 300, 1), (100, 10, 1), (100, 60, 1), (50, 5, 5),
])
def test_urgent_calls_go_ahead_of_a_bulk_backlog_and_the_limit_holds(limit, urgent_rate, bulk_weight):
    calls = run_mixed(limit, 12, urgent_rate, bulk_weight=bulk_weight, guard=GUARD)
    assert max(worst_windows(calls, GUARD).values()) <= limit
    # Past the first second (the bulk's share of the windows shrinks as the
    # urgent calls' rate is learnt): not behind the bulk's booking, at most a
    # guard band (2 x 0.15 s) and a little.
    waits = sorted(w for start, _, hurry, w in calls if hurry and start - w >= 1002)
    assert waits[int(0.99 * len(waits))] <= 2 * GUARD + 0.05, waits[-10:]
    counts = Counter()
    for start, weight, _, _ in calls:
        counts[math.floor(start)] += weight
    full = [counts[s] for s in range(1002, 1011)]
    # The bulk takes what is left: the windows stay full but for the
    # headroom kept for the urgent calls' ups and downs (3 x the square root
    # of their rate), the margin and what a bulk call is too heavy to fit in.
    assert sum(full) / len(full) >= 0.99 * (limit - 3 * math.sqrt(urgent_rate)) - bulk_weight, full


def test_the_bulk_gets_the_whole_quota_back_once_urgent_calls_stop():
    calls = run_mixed(1500, 14, 200, urgent_until=4, bulk_weight=100, guard=GUARD)
    bulk = Counter()
    for start, weight, hurry, _ in calls:
        if not hurry:
            bulk[math.floor(start)] += weight
    assert 1200 <= bulk[1002] <= 1300  # leaving the urgent calls' share (and some headroom)
    assert [bulk[s] for s in range(1010, 1013)] == [1500] * 3  # alone again: all of it
    assert max(worst_windows(calls, GUARD).values()) <= 1500


def test_bulk_alone_is_unchanged_by_the_urgent_lane():
    """No urgent call ever: the same slots as the plain schedule's."""
    calls = run_mixed(1500, 5, 0, bulk_weight=100, guard=GUARD)
    assert all(not hurry for _, _, hurry, _ in calls)
    counts = Counter(math.floor(start) for start, _, _, _ in calls)
    assert [counts[s] for s in range(1001, 1004)] == [15, 15, 15]  # 1,500 a window in calls of 100


# -- across processes ----------------------------------------------------------------------

CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
import redis.asyncio as aredis
from imshift.vendors.http import http_client
from imshift.workers.ratelimit import RateLimiter

async def main(cfg):
    redis = aredis.Redis.from_url(cfg["redis"]) if cfg.get("redis") else None
    limiter = RateLimiter({"send": cfg["rate"]}, redis=redis,
                          shared_dir=Path(cfg["dir"]) if cfg.get("dir") else None)
    throttle = limiter.throttle_for("app1")
    statuses = {}
    async with http_client() as http:
        async def caller():
            while time.time() < cfg["end"]:
                await throttle("send", cfg["weight"])
                if time.time() >= cfg["end"]:
                    break
                if cfg.get("url"):
                    status = str((await http.post(cfg["url"] + "/call")).status_code)
                    statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(cfg["start"] - time.time())
        await asyncio.gather(*(caller() for _ in range(cfg["tasks"])))
    if redis is not None:
        await redis.aclose()
    print(json.dumps(statuses), flush=True)

print("ready", flush=True)
asyncio.run(main(json.loads(sys.stdin.readline())))
"""


class BulkProcess:
    """A bulk job's process: `tasks` callers of `weight` each, from `start`
    to `end` (epoch seconds), calling the sandbox at `url` if given."""

    def __init__(self, **cfg):
        self.cfg = cfg
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, start, end):
        assert self.proc.stdout.readline().strip() == "ready"  # imports take a while
        self.proc.stdin.write(json.dumps({**self.cfg, "start": start, "end": end}) + "\n")
        self.proc.stdin.flush()

    def result(self):
        out = json.loads(self.proc.communicate(timeout=30)[0])
        assert self.proc.returncode == 0
        return out

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def shared(where, tmp_path, redis_server):
    """The child's and this process's ways to the one schedule."""
    if where == "redis":
        return {"redis": redis_server.url}, {"redis": aredis.Redis.from_url(redis_server.url)}
    return {"dir": str(tmp_path)}, {"shared_dir": tmp_path}


async def booked_until(limiter, where):
    """The epoch time up to which the shared schedule of app1's `send` is booked."""
    if where == "redis":
        win, pos = await limiter.redis.hmget(f"{limiter.namespace}:app1:send", "win", "pos")
        win, pos = float(win or 0), float(pos or 0)
    else:
        schedule = limiter._schedule("app1", "send")
        win, pos = schedule.peek("win"), schedule.peek("pos")
    return win + limiter.guard + pos * (1 - 2 * limiter.guard)


@pytest.mark.parametrize("where", ["embedded", "redis"])
async def test_an_urgent_call_goes_ahead_of_what_another_process_booked(where, tmp_path, redis, redis_server):
    """A bulk job in another process books its heavy calls (0.6 s of the
    quota each) ahead; an urgent call made while the schedule is booked a
    second ahead goes out before that point, in the current window's room.
    Before, it queued behind every slot booked before it."""
    child_cfg, mine = shared(where, tmp_path, redis_server)
    bulk = BulkProcess(rate=5, weight=3, tasks=4, **child_cfg)
    limiter = RateLimiter({"send": 5}, **mine)
    try:
        start = math.ceil(time.time()) + 1
        bulk.start(start, start + 30)
        deadline = time.monotonic() + 20
        while await booked_until(limiter, where) < time.time() + 1.0:  # a backlog a second ahead
            assert time.monotonic() < deadline, "the bulk process never booked ahead"
            await asyncio.sleep(0.01)
        booked = await booked_until(limiter, where)
        urgent.set(True)
        await limiter.throttle_for("app1")("send", 1)
        went = time.time()
        print(f"booked until {booked:.3f}, the urgent call went at {went:.3f}")
        assert went < booked
    finally:
        bulk.stop()
        if limiter.redis is not None:
            await limiter.redis.aclose()


@pytest.mark.loopback
@pytest.mark.parametrize("where", ["embedded", "redis"])
async def test_urgent_and_bulk_calls_from_two_processes_never_pass_the_limit(where, tmp_path, redis,
                                                                            redis_server):
    rate, seconds = 100, 4
    sandbox = TinySandbox(rate_limits={"send": rate})
    child_cfg, mine = shared(where, tmp_path, redis_server)
    bulk = BulkProcess(rate=rate, weight=1, tasks=16, **child_cfg)
    limiter = RateLimiter({"send": rate}, **mine)
    try:
        with served(sandbox) as url:
            bulk.cfg["url"] = url
            start = math.ceil(time.time()) + 1
            bulk.start(start, start + seconds)
            await asyncio.sleep(start - time.time())
            urgent.set(True)
            live = await hammer(limiter.throttle_for("app1"), url, 4, start + seconds, key="send", pause=0.1)
            bulk_statuses = bulk.result()
    finally:
        bulk.stop()
        if limiter.redis is not None:
            await limiter.redis.aclose()
    counts = [sandbox.window_counts["send"][s] for s in range(start, start + seconds)]
    print(f"windows {counts}, urgent {dict(live)}, bulk {bulk_statuses}, "
          f"over-limit {sandbox.over_limit['send']}")
    assert sandbox.over_limit["send"] == 0
    assert sandbox.max_per_second("send") <= rate
    assert set(live) == {200} and live[200] > 0
    assert set(bulk_statuses) == {"200"} and bulk_statuses["200"] > 0


# -- a slot gone stale while the call was announced ----------------------------------------

async def test_a_call_past_its_slot_after_the_announce_takes_a_new_slot():
    """workers/runtime.py `announcing`: the announce (a database write) ran
    past the slot's last moment, so the call would land in the next window:
    it takes a new slot instead of going out."""
    limiter = RateLimiter({"send": 10})
    throttle = announcing(limiter.throttle_for("app1"))
    seen = []

    async def slow_announce():
        latest, _ = last_slot.get()
        seen.append(latest)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(latest - loop.time() + 0.05)  # past the slot's last moment

    before_send.set(slow_announce)
    try:
        await throttle("send", 1)
    finally:
        before_send.set(None)
    latest, _ = last_slot.get()
    assert len(seen) == 1  # announced once
    assert latest > seen[0]  # a new slot
    assert asyncio.get_running_loop().time() <= latest  # still usable


async def test_urgent_calls_with_a_backlog_of_their_own_are_batched_too(tmp_path):
    """More urgent calls than the rate: they are booked HORIZON at a time
    by the leader, as the others are, not each at once far ahead (a pause
    from an over-limit reply must reach them soon)."""
    limiter = RateLimiter({"send": 1000}, shared_dir=tmp_path)
    throttle = limiter.throttle_for("app1")
    done = []

    async def call():
        urgent.set(True)
        await throttle("send", 1)
        done.append(time.time())

    tasks = [asyncio.ensure_future(call()) for _ in range(2000)]  # 2 s of the quota
    await asyncio.sleep(0)
    assert limiter._leaders  # the backlog went to the batching path
    schedule = limiter._schedule("app1", "send")
    furthest = 0.0
    while not all(t.done() for t in tasks):
        furthest = max(furthest, schedule.peek("unext") - time.time())
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    # HORIZON (0.1 s), a batch and a guard band at most, not the whole backlog
    assert furthest < 1.0, furthest
    assert max(done) - min(done) >= 1.5  # paced: 2,000 calls are 2 s of the quota
