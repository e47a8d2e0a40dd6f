"""RongCloud against endpoints that misbehave: bodies that are not the
vendor's JSON, HTTP 429, a getToken without a token, the code table, the
concurrency bound, and host failover that never repeats a send that may have
gone out."""

import asyncio
import json
from collections import Counter

import httpx
import pytest

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile
from imshift.vendors.rongcloud import RongCloudClient, RongCloudConfig
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
TRUNCATED = b'{"code": 200, "messageUIDs": [{"userId": "bob", "messa'


class Canned:
    """An ASGI endpoint that gives every request the same reply (or the one
    set for its path), and counts requests and how many were in flight."""

    def __init__(self, status=200, body=b"", headers=(), *, paths=None, delay=0.0):
        self.reply = (status, body, dict(headers))
        self.paths = paths or {}
        self.delay = delay
        self.requests: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "http"
        self.requests[scope["path"]] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            status, body, headers = self.paths.get(scope["path"], self.reply)
            if isinstance(body, dict):
                body = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.in_flight -= 1


class ByHost(httpx.AsyncBaseTransport):
    """Sends each request to the transport of its host, and counts them."""

    def __init__(self, routes):
        self.routes = routes
        self.hosts: Counter[str] = Counter()

    async def handle_async_request(self, request):
        self.hosts[request.url.host] += 1
        return await self.routes[request.url.host].handle_async_request(request)


def client_of(*apps_or_transports, timeout=10.0, **config):
    """A client with one host per app (or transport), tried in the order given."""
    routes, hosts = {}, []
    for i, target in enumerate(apps_or_transports):
        host = f"h{i}.test"
        routes[host] = (target if isinstance(target, httpx.AsyncBaseTransport)
                        else httpx.ASGITransport(app=target))
        hosts.append(f"http://{host}")
    transport = ByHost(routes)
    config = RongCloudConfig("demo-app-key", "demo-secret", hosts=tuple(hosts), **config)
    client = RongCloudClient(config, httpx.AsyncClient(transport=transport), timeout=timeout)
    return client, transport


async def send_each_way(client):
    """One result per sending method: send, send_group, broadcast."""
    message = Message(text="hi")
    [sent] = await client.send("ann", ["bob"], message)
    [grouped] = await client.send_group("ann", ["g1"], message)
    broadcast = await client.broadcast("ann", message)
    return [sent, grouped, broadcast]


# -- replies that are not the vendor's JSON --------------------------------------------------

@pytest.mark.parametrize("body", [HTML, TRUNCATED, b"OK", b""],
                         ids=["html", "truncated", "text", "empty"])
async def test_a_200_that_is_not_json_leaves_a_send_maybe_delivered(body):
    client, _ = client_of(Canned(200, body, {"content-type": "text/html"}))
    for result in await send_each_way(client):
        assert (result.outcome, result.maybe_delivered) == (Outcome.RETRYABLE, True), result
        assert not result.data


@pytest.mark.parametrize("body", [HTML, TRUNCATED], ids=["html", "truncated"])
async def test_a_200_that_is_not_json_is_retryable_for_a_call_that_may_be_repeated(body):
    client, _ = client_of(Canned(200, body))
    [registered] = await client.register_users([Profile("ann", "Ann")])
    assert (registered.outcome, registered.maybe_delivered) == (Outcome.RETRYABLE, False)
    assert "token" not in registered.data


async def test_a_reply_without_a_code_is_not_success():
    client, _ = client_of(Canned(200, {"messageUIDs": []}))
    for result in await send_each_way(client):
        assert (result.outcome, result.code, result.maybe_delivered) == \
            (Outcome.RETRYABLE, "no code", True)


# -- HTTP 429 --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, code", [
    (b"", "http 429"), (HTML, "http 429"),
    (b'{"code": 1008, "errorMessage": "The call frequency exceeds the limit."}', "1008"),
])
async def test_http_429_is_rate_limited_with_retry_after_body_or_not(body, code):
    client, _ = client_of(Canned(429, body, {"Retry-After": "7"}))
    [registered] = await client.register_users([Profile("ann", "Ann")])
    results = [registered, *await send_each_way(client)]
    for result in results:
        assert (result.outcome, result.code, result.retry_after) == \
            (Outcome.RATE_LIMITED, code, 7.0)
        assert not result.maybe_delivered  # the vendor refused it: surely not sent


async def test_429_without_retry_after_and_1008_on_200_with_it():
    client, _ = client_of(Canned(429))
    [result] = await client.send("ann", ["bob"], Message(text="hi"))
    assert (result.outcome, result.retry_after) == (Outcome.RATE_LIMITED, None)
    client, _ = client_of(Canned(200, {"code": 1008}, {"Retry-After": "2.5"}))
    [result] = await client.send("ann", ["bob"], Message(text="hi"))
    assert (result.outcome, result.code, result.retry_after) == (Outcome.RATE_LIMITED, "1008", 2.5)


async def test_a_429_is_not_a_failed_host():
    primary = Canned(429, b"", {"Retry-After": "1"})
    backup = Canned(200, {"code": 200, "token": "t"})
    client, transport = client_of(primary, backup)
    [first] = await client.register_users([Profile("ann", "Ann")])
    [second] = await client.register_users([Profile("bob", "Bob")])
    assert first.outcome is second.outcome is Outcome.RATE_LIMITED
    assert transport.hosts == {"h0.test": 2}


# -- getToken without a token ----------------------------------------------------------------

@pytest.mark.parametrize("reply", [{"code": 200, "userId": "ann"}, {"code": 200, "token": ""},
                                   {"code": "200"}])
async def test_a_get_token_reply_without_a_token_is_not_ok(reply):
    info = {"code": 200, "userName": "Ann", "createTime": "2026-01-01"}
    client, _ = client_of(Canned(200, reply, paths={"/user/info.json": (200, info, {})}))
    [registered] = await client.register_users([Profile("ann", "Ann")])
    [issued] = await client.issue_tokens(["ann"])
    for result in (registered, issued):
        assert result.outcome is Outcome.RETRYABLE and result.code == "incomplete"
        assert not result.maybe_delivered and "token" not in result.data
        assert "token" in result.message


# -- the code table --------------------------------------------------------------------------

@pytest.mark.parametrize("status, code, outcome", [
    (200, 200, Outcome.OK),
    (500, 1000, Outcome.RETRYABLE), (504, 1050, Outcome.RETRYABLE),
    (401, 1001, Outcome.AUTH), (401, 1004, Outcome.AUTH), (401, 1006, Outcome.AUTH),
    (401, 1007, Outcome.AUTH),
    (429, 1008, Outcome.RATE_LIMITED), (200, 1008, Outcome.RATE_LIMITED),
    (400, 1002, Outcome.REJECTED), (400, 1003, Outcome.REJECTED), (400, 1005, Outcome.REJECTED),
    (430, 1009, Outcome.REJECTED), (400, 2007, Outcome.REJECTED),
    (500, 1002, Outcome.RETRYABLE),  # a 5xx is the server failing, whatever code it carries
    (500, 200, Outcome.RETRYABLE), (400, 200, Outcome.REJECTED),
    (401, None, Outcome.AUTH), (503, None, Outcome.RETRYABLE), (400, None, Outcome.REJECTED),
])
async def test_the_vendors_codes(status, code, outcome):
    body = {"code": code, "errorMessage": "vendor says", "token": "t"} if code is not None else b""
    client, _ = client_of(Canned(status, body))
    [result] = await client.update_profiles([Profile("ann", "Ann")])
    assert result.outcome is outcome
    assert result.code == (str(code) if code is not None else f"http {status}")


async def test_rejections_that_need_the_console_say_so():
    client, _ = client_of(Canned(430, {"code": 1009, "errorMessage": "service not open"}))
    [result] = await client.import_friends("ann", ["bob"])
    assert "enable it in the RongCloud console" in result.message
    assert "service not open" in result.message
    client, _ = client_of(Canned(400, {"code": 2007, "errorMessage": "user limit"}))
    [result] = await client.register_users([Profile("ann", "Ann")])
    assert "test-user limit" in result.message and "user limit" in result.message


# -- bounded concurrency ---------------------------------------------------------------------

async def test_per_item_calls_are_bounded_by_config_concurrency():
    app = Canned(200, {"code": 200, "token": "t"}, delay=0.02)
    client, _ = client_of(app, concurrency=3)
    results = await client.register_users([Profile(f"u{i}", "A") for i in range(12)])
    assert all(r.outcome is Outcome.OK for r in results)
    assert app.most_in_flight == 3 and app.requests["/user/getToken.json"] == 12
    assert RongCloudClient(RongCloudConfig("k", "s"), httpx.AsyncClient()).concurrency == 32


# -- host failover never repeats a send that may have gone out --------------------------------

class DropsMidReply:
    """A TCP server on 127.0.0.1 that reads a request, starts a JSON reply and
    closes the connection halfway: the request surely arrived."""

    def __init__(self):
        self.requests = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        self.requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n" + TRUNCATED)
        await writer.drain()
        writer.close()


async def send_one_way(client, op):
    message = Message(text="hi")
    if op is Operation.BROADCAST:
        return await client.broadcast("ann", message)
    method = client.send if op is Operation.SEND else client.send_group
    [result] = await method("ann", ["bob"], message)
    return result


def over_loopback(primary, box):
    """A client whose primary host is `primary` on 127.0.0.1 and whose backup is `box`."""
    transport = ByHost({"127.0.0.1": httpx.AsyncHTTPTransport(),
                        "backup.test": httpx.ASGITransport(app=box.app)})
    config = RongCloudConfig("demo-app-key", "demo-secret",
                             hosts=(f"http://127.0.0.1:{primary.port}", "http://backup.test"))
    return RongCloudClient(config, httpx.AsyncClient(transport=transport)), transport


@pytest.mark.parametrize("op", [Operation.SEND, Operation.SEND_GROUP, Operation.BROADCAST])
async def test_a_send_whose_reply_broke_off_is_not_repeated_on_the_backup(op):
    box = RongCloudSandbox()
    async with DropsMidReply() as primary:
        client, transport = over_loopback(primary, box)
        result = await send_one_way(client, op)
        assert (result.outcome, result.code, result.maybe_delivered) == \
            (Outcome.RETRYABLE, "reset", True)
        assert primary.requests == 1 and transport.hosts == {"127.0.0.1": 1}
        assert box.calls.total() == 0
        [registered] = await client.register_users([Profile("ann", "Ann")])  # the backup now
        assert registered.outcome is Outcome.OK and transport.hosts["backup.test"] == 1


async def test_a_register_whose_reply_broke_off_is_made_again_on_the_backup():
    box = RongCloudSandbox()
    async with DropsMidReply() as primary:
        client, transport = over_loopback(primary, box)
        [registered] = await client.register_users([Profile("ann", "Ann")])
        assert registered.outcome is Outcome.OK and box.stored_profile("ann") is not None
        assert primary.requests == 1 and transport.hosts == {"127.0.0.1": 1, "backup.test": 1}


async def test_a_send_answered_by_a_502_page_is_not_repeated_on_the_backup():
    box = RongCloudSandbox()
    client, transport = client_of(Canned(502, HTML), httpx.ASGITransport(app=box.app))
    [sent] = await client.send("ann", ["bob"], Message(text="hi"))
    assert (sent.outcome, sent.code, sent.maybe_delivered) == (Outcome.RETRYABLE, "http 502", True)
    assert transport.hosts == {"h0.test": 1} and box.inbox("bob") == []
    [registered] = await client.register_users([Profile("ann", "Ann")])  # the backup now
    assert registered.outcome is Outcome.OK and transport.hosts["h1.test"] == 1


async def test_a_send_answered_by_a_200_page_is_not_repeated_anywhere():
    box = RongCloudSandbox()
    client, transport = client_of(Canned(200, HTML), httpx.ASGITransport(app=box.app))
    for result in await send_each_way(client):
        assert result.maybe_delivered
    assert transport.hosts == {"h0.test": 3} and box.calls.total() == 0


async def test_a_send_that_timed_out_is_not_repeated_on_the_backup():
    box = RongCloudSandbox()
    client, transport = client_of(Canned(200, {"code": 200}, delay=1.0),
                                  httpx.ASGITransport(app=box.app), timeout=0.05)
    [sent] = await client.send("ann", ["bob"], Message(text="hi"))
    assert (sent.outcome, sent.code, sent.maybe_delivered) == (Outcome.RETRYABLE, "timeout", True)
    assert transport.hosts == {"h0.test": 1} and box.inbox("bob") == []


async def test_a_group_create_may_be_made_again_on_the_backup():
    box = RongCloudSandbox()
    client, transport = client_of(Canned(502, HTML), httpx.ASGITransport(app=box.app))
    result = await client.create_group(Group("g1", "G", "ann", ["bob"]))
    assert result.outcome is Outcome.OK and box.group_members("g1") == {"ann", "bob"}
    assert transport.hosts == {"h0.test": 1, "h1.test": 1}
