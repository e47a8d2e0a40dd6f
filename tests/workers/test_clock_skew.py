"""The rate limiter after a clock was ahead (issue 21, item 19): a command
that ran with its clock 10 minutes ahead left the shared schedule (the file
in the limits folder, or the Redis key after Redis's clock was corrected or
a failover) holding slots in the future, and the next command on a correct
clock made no progress. A schedule written on a clock ahead, or holding
slots further ahead than the rate explains, is forgotten; clocks that differ
by a few seconds keep one schedule (a short wait, never a burst)."""

import asyncio
import time

import pytest

from imshift.workers.ratelimit import RateLimiter


RATE = 50
AHEAD = 600.0  # ten minutes


async def calls_take(limiter, n, app="app1"):
    """Seconds `n` calls of weight 1 take, 25 at a time; fails past 10 s."""
    throttle = limiter.throttle_for(app)
    began = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(throttle("register", 1) for _ in range(n))), 10)
    return time.monotonic() - began


async def test_a_folder_left_by_a_clock_ten_minutes_ahead_holds_no_call_back(tmp_path, monkeypatch):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + AHEAD)  # the whole process's clock
    ahead = RateLimiter({"register": RATE}, shared_dir=tmp_path)
    await calls_take(ahead, 30)
    await ahead.slow_down("app1", "register", 1.0)  # an over-limit reply: a pause, a cut rate
    monkeypatch.setattr(time, "time", real)  # the clock corrected; the next command starts
    took = await calls_take(RateLimiter({"register": RATE}, shared_dir=tmp_path), RATE)
    assert took < 1.6, took  # the rate's second (and a guard band), not ten minutes


async def test_a_redis_schedule_left_by_a_clock_ten_minutes_ahead_holds_no_call_back(redis):
    # Written as the scripts leave it on a Redis whose clock was ten minutes
    # ahead (Redis's clock is the one the scripts read: it cannot be set here).
    seconds, _ = await redis.time()
    future = seconds + AHEAD
    await redis.hset("imshift:rl:app1:register", mapping={
        "win": int(future) + 1, "pos": 0.4, "cw": int(future) + 1, "cn": 20, "cn1": 0,
        "bnext": future, "paused": future + 1, "factor": 0.9, "fat": future, "cut": future})
    took = await calls_take(RateLimiter({"register": RATE}, redis=redis), RATE)
    assert took < 1.6, took


@pytest.mark.parametrize("where", ["embedded", "redis"])
async def test_slots_far_ahead_of_a_clock_that_never_moved_are_stale_too(where, tmp_path, redis):
    """Slots a minute ahead with the last write now: no reservation made them
    (say, a process of an older imshift wrote the file before the fix)."""
    limiter = RateLimiter({"register": RATE}, **({"redis": redis} if where == "redis"
                                                 else {"shared_dir": tmp_path}))
    await calls_take(limiter, 1)
    if where == "redis":
        seconds, _ = await redis.time()
        await redis.hset("imshift:rl:app1:register", mapping={"win": seconds + 60, "cw": seconds + 60})
    else:
        with limiter._schedule("app1", "register") as slots:
            slots.win = slots.cw = int(time.time()) + 60
        limiter._spares.clear()
    took = await calls_take(limiter, RATE)
    assert took < 1.6, took


async def test_a_clock_a_few_seconds_ahead_keeps_the_schedule(tmp_path, monkeypatch):
    """Clocks a few seconds apart share one schedule: the correct one waits
    for the slots the other took (no burst over the rate), then goes on."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 2.0)
    ahead = RateLimiter({"register": RATE}, shared_dir=tmp_path)
    await calls_take(ahead, 2 * RATE)  # two seconds of the rate, ending 2 s ahead of the real clock
    monkeypatch.setattr(time, "time", real)
    took = await calls_take(RateLimiter({"register": RATE}, shared_dir=tmp_path), 1)
    assert 1.5 <= took <= 3.5, took


async def test_a_heavy_call_still_holds_back_the_next_on_another_limiter(tmp_path):
    """A lead the rate explains is kept: a call of 15 s of the quota by one
    process holds the next process's call back."""
    first, second = (RateLimiter({"send": 100}, shared_dir=tmp_path) for _ in range(2))
    await first.throttle_for("app1")("send", 1500)
    began = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(second.throttle_for("app1")("send", 1), 3)
    assert time.monotonic() - began >= 2.9
