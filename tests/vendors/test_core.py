"""The shared vendor core: field rules, host failover order, the sandbox's
strict one-second windows and faults, and the client's one HTTP path."""

import asyncio
import contextlib

import httpx
import pytest

from imshift.vendors.vocabulary import FieldRule, Operation, Outcome, Profile, VendorRules
from imshift.vendors.client import CallFailed, VendorClient
from imshift.vendors.hosts import HostPool
from imshift.vendors.sandbox.common import Faults
from tiny_sandbox import TinySandbox


def test_field_rule_names_the_field_and_the_reason():
    rule = FieldRule(max_len=4, unit="bytes", pattern=r"[a-z]+", pattern_hint="lower-case letters")
    assert rule.check("user_id", "abc") is None
    assert rule.check("user_id", "abcde") == "user_id: 5 bytes, at most 4 allowed"
    by_bytes = FieldRule(max_len=4, unit="bytes")
    assert by_bytes.check("name", "éé") is None  # 4 bytes
    assert by_bytes.check("name", "ééé") == "name: 6 bytes, at most 4 allowed"
    assert rule.check("user_id", "AB") == "user_id: 'AB' is not allowed (lower-case letters)"
    assert FieldRule(required=True).check("name", "") == "name: required"
    assert FieldRule(choices=("0", "1")).check("gender", "7") == "gender: '7' is not one of 0, 1"


def test_rules_check_every_field_including_extras():
    rules = VendorRules(
        fields={"user_id": FieldRule(max_len=8, required=True), "name": FieldRule(max_len=3),
                "gender": FieldRule(choices=("0", "1", "2"))},
        batch_size={Operation.REGISTER: 10}, rates={Operation.REGISTER: 5})
    assert rules.check_profile(Profile("u1", "Ann", extra={"gender": "1"})) == []
    assert rules.check_profile(Profile("", "Annabel", avatar="x", extra={"email": "a@b"})) == [
        "email: not a profile field this vendor accepts",
        "user_id: required",
        "name: 7 chars, at most 3 allowed",
        "avatar: not a profile field this vendor accepts",
    ]


def test_host_pool_fails_over_and_comes_back_after_cooldown():
    now = [100.0]
    pool = HostPool(["https://a", "https://b/"], cooldown=30, clock=lambda: now[0])
    assert pool.current() == "https://a"
    pool.failed("https://a")
    assert pool.current() == "https://b"
    now[0] += 29.9
    assert pool.current() == "https://b"
    now[0] += 0.2
    assert pool.current() == "https://a"
    pool.failed("https://a")
    pool.failed("https://b")
    assert pool.current() == "https://a"  # all down: the one that failed longest ago


class TinyClient(VendorClient):
    vendor = "tiny"
    capabilities = frozenset()


def tiny_client(sandbox, timeout=5.0):
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app))
    return TinyClient(None, http, timeout=timeout)


async def test_sandbox_holds_fixed_one_second_windows_and_counts():
    now = [1000.2]
    sandbox = TinySandbox(rate_limits={"register": 3}, clock=lambda: now[0])
    client = tiny_client(sandbox)
    statuses = [(await client._request("register", "POST", "http://t/call")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    now[0] = 1001.0  # a new window
    reply = await client._request("register", "POST", "http://t/call")
    assert reply.status == 200
    assert sandbox.calls["register"] == 6
    assert sandbox.over_limit["register"] == 2
    assert sandbox.max_per_second("register") == 3


async def test_a_limit_under_one_call_a_second_allows_one_call_per_its_window():
    now = [3600.0 * 100]
    sandbox = TinySandbox(rate_limits={"register": 2 / 3600}, clock=lambda: now[0])  # 2 an hour
    client = tiny_client(sandbox)
    statuses = [(await client._request("register", "POST", "http://t/call")).status for _ in range(2)]
    assert statuses == [200, 429]
    now[0] += 1799  # still the same half hour
    assert (await client._request("register", "POST", "http://t/call")).status == 429
    now[0] += 1  # the next one
    assert (await client._request("register", "POST", "http://t/call")).status == 200


async def test_sandbox_blocks_the_app_after_an_over_limit_call():
    now = [50.0]
    sandbox = TinySandbox(rate_limits={"register": 1}, block_seconds=10, clock=lambda: now[0])
    client = tiny_client(sandbox)
    assert (await client._request("register", "POST", "http://t/call")).status == 200
    assert (await client._request("register", "POST", "http://t/call")).status == 429
    now[0] = 55.0  # a new window, but still blocked
    assert (await client._request("register", "POST", "http://t/call")).status == 429
    now[0] = 61.0
    assert (await client._request("register", "POST", "http://t/call")).status == 200


async def test_injected_errors_follow_the_configured_share():
    sandbox = TinySandbox(faults=Faults(error_rate=0.3, seed=7))
    client = tiny_client(sandbox)
    statuses = [(await client._request("register", "POST", "http://t/call")).status for _ in range(400)]
    assert 80 <= statuses.count(500) <= 160
    assert sandbox.faulted["register"] == statuses.count(500)


async def test_a_hanging_call_is_a_retryable_timeout_that_may_have_been_delivered():
    sandbox = TinySandbox(faults=Faults(timeout_rate=1.0, hang_seconds=5))
    client = tiny_client(sandbox, timeout=0.05)
    with pytest.raises(CallFailed) as failed:
        await client._request("register", "POST", "http://t/call")
    assert failed.value.result.outcome is Outcome.RETRYABLE
    assert failed.value.result.code == "timeout"
    assert failed.value.result.message.startswith("timeout")
    assert failed.value.result.maybe_delivered


def both_transports():
    """The plain httpx pool and the aiohttp transport used for real traffic."""
    from imshift.vendors.http import http_client

    return [httpx.AsyncClient(), http_client()]


@contextlib.asynccontextmanager
async def raw_server(handler):
    """A bare TCP server on a free loopback port answering with `handler`
    (asyncio streams): a server that misbehaves below HTTP. Its base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_refused_connection_is_retryable_and_surely_not_delivered():
    for http in both_transports():
        async with http:
            client = TinyClient(None, http, timeout=2)
            with pytest.raises(CallFailed) as failed:
                await client._request("register", "POST", "http://127.0.0.1:9/nothing-listens-here")
        assert failed.value.result.outcome is Outcome.RETRYABLE
        assert not failed.value.result.maybe_delivered, type(http._transport)


async def test_a_dropped_connection_is_retryable_and_may_have_been_delivered():
    async def read_then_hang_up(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with raw_server(read_then_hang_up) as base:
        for http in both_transports():
            async with http:
                client = TinyClient(None, http, timeout=2)
                with pytest.raises(CallFailed) as failed:
                    await client._request("register", "POST", f"{base}/x")
            assert failed.value.result.outcome is Outcome.RETRYABLE
            assert failed.value.result.maybe_delivered, type(http._transport)


async def test_a_reply_over_the_size_cap_is_not_read_whole():
    """A proxy answering 50 MB: the client stops reading at its cap."""
    written = []

    async def huge_reply(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\n\r\n")
        try:
            for _ in range(50):
                writer.write(b"x" * 1024 * 1024)
                await writer.drain()
                written.append(1)
        except (ConnectionError, OSError):
            pass
        writer.close()

    class SmallCap(TinyClient):
        max_reply_bytes = 64 * 1024

    async with raw_server(huge_reply) as base:
        for http in both_transports():
            written.clear()
            async with http:
                with pytest.raises(CallFailed) as failed:
                    await SmallCap(None, http, timeout=10)._request("send", "POST", f"{base}/x")
            result = failed.value.result
            assert (result.outcome, result.code) == (Outcome.RETRYABLE, "oversized"), result
            assert result.maybe_delivered and "65536 bytes" in result.message
            await asyncio.sleep(0.2)
            assert len(written) < 30, type(http._transport)  # it hung up long before 50 MB


async def test_a_compressed_reply_is_read_decoded_and_capped_decoded():
    """A gzip reply (a gateway's) is read as its JSON, and the size cap
    applies to what it decodes to: 100 kB of gzip that unpacks to 8 MB is
    not read whole."""
    import gzip

    small = gzip.compress(b'{"code": 200, "info": {"token": "t"}}')
    bomb = gzip.compress(b" " * (8 * 1024 * 1024 + 1))

    async def gzip_reply(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        body = bomb if b"/bomb" in request else small
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async with raw_server(gzip_reply) as base:
        for http in both_transports():
            async with http:
                client = TinyClient(None, http, timeout=10)
                reply = await client._request("register", "POST", f"{base}/small")
                assert reply.body == {"code": 200, "info": {"token": "t"}}, type(http._transport)
                with pytest.raises(CallFailed) as failed:
                    await client._request("register", "POST", f"{base}/bomb")
                assert failed.value.result.code == "oversized", type(http._transport)


async def test_throttle_sees_every_call_with_its_key_and_weight():
    seen = []

    async def throttle(key, weight):
        seen.append((key, weight))

    sandbox = TinySandbox()
    client = tiny_client(sandbox)
    client.throttle = throttle
    await client._request("register", "POST", "http://t/call", weight=7)
    assert seen == [("register", 7)]


async def test_unsupported_operations_raise_before_any_call():
    sandbox = TinySandbox()
    client = tiny_client(sandbox)
    from imshift.vendors.vocabulary import Unsupported
    with pytest.raises(Unsupported, match="tiny does not support send"):
        await client.send("a", ["b"], None)
    assert sandbox.calls.total() == 0


async def test_a_wrong_base_url_stops_like_a_bad_key():
    client = tiny_client(TinySandbox())
    with pytest.raises(CallFailed) as failed:
        await client._request("register", "POST", "http://t/wrong/path?secret=x")
    assert failed.value.result.outcome is Outcome.AUTH
    assert "check the app's base URL" in failed.value.result.message
    assert "secret" not in failed.value.result.message


async def test_the_counters_can_be_read_over_http():
    sandbox = TinySandbox(rate_limits={"register": 1})
    client = tiny_client(sandbox)
    for _ in range(3):
        await client._request("register", "POST", "http://t/call")
    stats = (await client.http.get("http://t/_sandbox/stats")).json()
    assert stats["calls"] == {"register": 3}
    assert stats["over_limit"]["register"] >= 1
    assert stats["max_per_second"] == {"register": 1}


def test_the_clients_and_the_registry_import_no_web_framework():
    """vendors/ is a client library: the sandboxes' ASGI stack is loaded only when asked for."""
    import subprocess
    import sys

    code = ("import sys, imshift.vendors.registry as r; assert r.vendor('netease').client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
