"""The limiter tests' Redis: one private redis-server per test module (never
the machine's shared one), emptied before each test that takes `redis`."""

import pytest
import redis.asyncio as aredis

from testsupport import RedisServer


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis(redis_server):
    client = aredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()
