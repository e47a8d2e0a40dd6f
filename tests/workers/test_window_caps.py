"""The longer-window counters on their own: a private Redis, and the embedded
file two limiters share. A call is counted in all of its windows or in none,
and the counters expire with their window."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
import redis as syncredis

from imshift.vendors.vocabulary import CapReached
from imshift.workers.window_caps import WindowCaps

CAPS = {"hour": 2, "day": 3}


def next_day() -> str:
    return time.strftime("%Y-%m-%d 00:00 UTC", time.gmtime((time.time() // 86400 + 1) * 86400))


def away_from_edges() -> None:
    """Not in the last 5 s of an hour (a test's calls must share its windows)."""
    left = 3600 - time.time() % 3600
    if left < 5:
        time.sleep(left + 0.2)


async def refusals(caps: WindowCaps, app: str, calls: int, limits=CAPS) -> list[str]:
    out = []
    for _ in range(calls):
        try:
            await caps.take(app, "broadcast", limits, 1, "RongCloud (app rc)")
            out.append("")
        except CapReached as exc:
            out.append(str(exc))
    return out


@pytest.mark.usefixtures("redis")  # its module's Redis, emptied first (tests/workers/conftest.py)
@pytest.mark.parametrize("mode", ["redis", "file"])
async def test_a_refused_call_counts_in_no_window(mode, redis_server, tmp_path):
    away_from_edges()
    if mode == "redis":
        client = aioredis.from_url(redis_server.url)
        first = second = WindowCaps(redis=client)
    else:
        first, second = WindowCaps(shared_dir=tmp_path), WindowCaps(shared_dir=tmp_path)
    got = await refusals(first, "rc", 2) + await refusals(second, "rc", 2)
    assert got[:2] == ["", ""]
    assert all(r.startswith("RongCloud (app rc) allows 2 broadcasts an hour; not sent") for r in got[2:])
    # The hour's refusals did not use the day: with the hour lifted, one more fits, then none.
    got = await refusals(second, "rc", 2, {"day": 3})
    assert got[0] == ""
    assert got[1] == f"RongCloud (app rc) allows 3 broadcasts a day; not sent: the next window opens at {next_day()}"
    assert await refusals(first, "other", 1) == [""]  # each app counts its own
    if mode == "redis":
        await client.aclose()


@pytest.mark.usefixtures("redis")
async def test_redis_counters_expire_with_their_window(redis_server):
    client = aioredis.from_url(redis_server.url)
    await WindowCaps(redis=client).take("rc", "broadcast", CAPS, 1, "rc")
    await client.aclose()
    plain = syncredis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in plain.keys("imshift:cap:rc:broadcast:*"))
    assert [k.split(":")[4] for k in keys] == ["3600", "86400"]
    now = time.time()
    for key in keys:
        seconds = int(key.split(":")[4])
        assert 0 < plain.ttl(key) <= seconds - now % seconds + 61
    plain.close()
