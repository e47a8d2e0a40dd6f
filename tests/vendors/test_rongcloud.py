"""RongCloud: signing, every capability against the sandbox over ASGI HTTP,
the vendor's error codes, and host failover."""

import dataclasses
import hashlib
import random
import time
from collections import Counter
from urllib.parse import urlencode

import httpx
import pytest

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile
from imshift.vendors.rongcloud import (RongCloudClient, RongCloudConfig, new_nonce, sign)
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox

BASE = "http://sandbox.test"


class Recording(httpx.AsyncBaseTransport):
    """Sends to per-host targets and keeps every request; a host mapped to None
    refuses the connection, as a host that is down does."""

    def __init__(self, routes):
        self.routes = routes
        self.requests: list[httpx.Request] = []
        self.hosts: Counter[str] = Counter()

    async def handle_async_request(self, request):
        self.requests.append(request)
        self.hosts[request.url.host] += 1
        target = self.routes[request.url.host]
        if target is None:
            raise httpx.ConnectError("connection refused", request=request)
        return await target.handle_async_request(request)


def asgi(box):
    return httpx.ASGITransport(app=box.app)


def client_for(box, transport=None, **config_changes):
    config = dataclasses.replace(box.config(BASE), **config_changes)
    transport = transport or Recording({"sandbox.test": asgi(box)})
    return RongCloudClient(config, httpx.AsyncClient(transport=transport)), transport


def signed_headers(secret="demo-secret", key="demo-app-key", *, prefix="", nonce=None,
                   timestamp=None):
    nonce = nonce or new_nonce()
    timestamp = timestamp or str(int(time.time() * 1000))
    return {f"{prefix}App-Key": key, f"{prefix}Nonce": nonce, f"{prefix}Timestamp": timestamp,
            f"{prefix}Signature": sign(secret, nonce, timestamp),
            "Content-Type": "application/x-www-form-urlencoded"}


async def raw_post(box, path, form, headers=None):
    async with httpx.AsyncClient(transport=asgi(box), base_url=BASE) as http:
        return await http.post(path, content=urlencode(form),
                               headers=headers or signed_headers())


async def register(box, *ids, name="Ann"):
    results = await box.client().register_users([Profile(i, f"{name} {i}") for i in ids])
    assert all(r.outcome is Outcome.OK for r in results), results


# -- signing ---------------------------------------------------------------------------------

def test_the_documented_request_example_is_a_full_vector():
    # The guide's example: Nonce 14314, Timestamp 1408710653000 (13 digits: ms),
    # with the App Secret of the guide's own PHP sample ('Y1W2MeFwwwRxa0').
    assert sign("Y1W2MeFwwwRxa0", "14314", "1408710653000") == \
        "30be0bbca9c9b2e27578701e9fda2358a814c88f"
    assert len("1408710653000") == 13


def test_a_hand_derived_vector():
    expected = hashlib.sha1(b"demo-secret" + b"14314" + b"1408710653000").hexdigest()
    assert sign("demo-secret", "14314", 1408710653000) == expected
    assert sign("demo-secret", "14314", "1408710653000") == expected
    assert sign("密钥", "1", "2") == hashlib.sha1("密钥12".encode()).hexdigest()
    assert expected == expected.lower() and len(expected) == 40


@pytest.mark.parametrize("prefix", ["", "RC-"])
async def test_every_request_is_signed_fresh_with_a_short_nonce_and_ms_timestamp(prefix):
    box = RongCloudSandbox()
    client, transport = client_for(box, header_prefix=prefix)
    before = int(time.time() * 1000)
    results = await client.register_users([Profile(f"u{i}", "Ann") for i in range(150)])
    after = int(time.time() * 1000)
    assert all(r.outcome is Outcome.OK for r in results)
    nonces = []
    for request in transport.requests:
        headers = request.headers
        nonce, stamp = headers[f"{prefix}Nonce"], headers[f"{prefix}Timestamp"]
        assert headers[f"{prefix}App-Key"] == "demo-app-key"
        assert 1 <= len(nonce) <= 18 and nonce.isdigit()
        assert len(stamp) == 13 and before <= int(stamp) <= after
        assert headers[f"{prefix}Signature"] == sign("demo-secret", nonce, stamp)
        assert headers["content-type"] == "application/x-www-form-urlencoded"
        nonces.append(nonce)
    assert len(set(nonces)) == len(nonces) == 150


async def test_the_sandbox_accepts_what_the_vendors_own_sdks_send():
    box = RongCloudSandbox()
    long_nonce = str(random.random()) + "7"  # the PyPI SDK's nonce: 19+ characters
    seconds_times_1000 = str(int(time.time()) * 1000)
    go_sdk_seconds = str(int(time.time()))
    variants = [
        {k.lower(): v for k, v in signed_headers(prefix="RC-", nonce=long_nonce,
                                                  timestamp=seconds_times_1000).items()},
        {k.upper(): v for k, v in signed_headers(nonce="1" * 19, timestamp=go_sdk_seconds).items()},
        signed_headers(),
    ]
    for i, headers in enumerate(variants):
        response = await raw_post(box, "/user/getToken.json",
                                  {"userId": f"sdk{i}", "name": "Ann"}, headers)
        assert response.status_code == 200, response.text
        assert response.json()["code"] == 200
    assert set(box.users) == {"sdk0", "sdk1", "sdk2"}


async def test_a_bad_signature_or_key_is_refused_as_the_vendor_does():
    box = RongCloudSandbox()
    [result] = await box.client(wrong_secret=True).register_users([Profile("ann", "Ann")])
    assert (result.outcome, result.code) == (Outcome.AUTH, "1004")
    assert "demo-secret" not in result.message
    wrong_key = await raw_post(box, "/user/getToken.json", {"userId": "ann", "name": "Ann"},
                               signed_headers(key="someone-else"))
    assert (wrong_key.status_code, wrong_key.json()["code"]) == (401, 1001)
    upper = signed_headers()
    upper["Signature"] = upper["Signature"].upper()
    refused = await raw_post(box, "/user/getToken.json", {"userId": "ann", "name": "Ann"}, upper)
    assert (refused.status_code, refused.json()["code"]) == (401, 1004)
    assert box.users == {} and box.calls.total() == 0


def test_the_secret_stays_out_of_reprs():
    config = RongCloudSandbox().config(BASE)
    assert "demo-secret" not in repr(config)
    assert "demo-secret" not in repr(RongCloudSandbox().client().config)


# -- users -----------------------------------------------------------------------------------

async def test_register_then_read_back():
    box = RongCloudSandbox()
    client = box.client()
    results = await client.register_users([Profile("ann", "Ann 安", "https://x/a.png"),
                                           Profile("bob", "Bob")])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
    assert results[0].data["user_id"] == "ann"
    assert results[0].data["token"] == box.tokens["ann"][-1]
    assert box.stored_profile("ann") == Profile("ann", "Ann 安", "https://x/a.png")
    assert await client.get_profiles(["ann", "bob", "nobody"]) == [
        Profile("ann", "Ann 安", "https://x/a.png"), Profile("bob", "Bob"), None]


async def test_registering_again_is_ok_with_a_new_token_and_counted_by_the_sandbox():
    box = RongCloudSandbox()
    client = box.client()
    [first] = await client.register_users([Profile("ann", "Ann")])
    [again] = await client.register_users([Profile("ann", "Annie")])
    assert (first.outcome, again.outcome) == (Outcome.OK, Outcome.OK)
    assert first.data["token"] != again.data["token"]
    assert box.duplicates["register"] == 1
    assert box.stored_profile("ann").name == "Annie"  # getToken overwrites, as the vendor says


async def test_invalid_rows_are_rejected_without_a_call_and_the_rest_go_out():
    box = RongCloudSandbox()
    results = await box.client().register_users([
        Profile("bad id!", "Bad"), Profile("x" * 65, "Long"), Profile("noname", ""),
        Profile("ok", "n" * 129), Profile("good", "Good")])
    assert [r.outcome for r in results] == [Outcome.REJECTED] * 4 + [Outcome.OK]
    assert "user_id" in results[0].message and "+ = - _" in results[0].message
    assert "user_id: 65 bytes" in results[1].message
    assert "name: required" in results[2].message
    assert "name: 129 bytes" in results[3].message
    assert {r.code for r in results[:4]} == {"invalid"}
    assert box.calls["register"] == 1 and set(box.users) == {"good"}


async def test_the_sandbox_checks_fields_itself():
    box = RongCloudSandbox()
    cases = [({"userId": "x" * 65, "name": "A"}, 1005, "userId"),
             ({"userId": "bad id", "name": "A"}, 1002, "userId"),
             ({"userId": "ann"}, 1002, "name"),
             ({"userId": "ann", "name": "A", "portraitUri": "p" * 1025}, 1005, "portraitUri")]
    for form, code, field in cases:
        response = await raw_post(box, "/user/getToken.json", form)
        assert (response.status_code, response.json()["code"]) == (400, code), form
        assert field in response.json()["errorMessage"]
    assert box.users == {}


async def test_the_development_user_cap_is_rejected_with_advice():
    box = RongCloudSandbox(max_users=2)
    client = box.client()
    results = await client.register_users([Profile("a", "A"), Profile("b", "B")])
    assert all(r.outcome is Outcome.OK for r in results)
    [capped] = await client.register_users([Profile("c", "C")])
    assert (capped.outcome, capped.code) == (Outcome.REJECTED, "2007")
    assert "test-user limit" in capped.message and "production app key" in capped.message
    [again] = await client.register_users([Profile("a", "A")])  # existing users still work
    assert again.outcome is Outcome.OK and box.stored_profile("c") is None


async def test_update_profiles_changes_only_what_is_given():
    box = RongCloudSandbox()
    await register(box, "ann")
    client = box.client()
    results = await client.update_profiles([Profile("ann", avatar="https://x/new.png"),
                                            Profile("nobody", "N"), Profile("ann")])
    assert results[0].outcome is Outcome.OK
    assert box.stored_profile("ann") == Profile("ann", "Ann ann", "https://x/new.png")
    assert (results[1].outcome, results[1].code) == (Outcome.REJECTED, "1002")
    assert "userId" in results[1].message
    assert results[2].outcome is Outcome.REJECTED and results[2].code == "invalid"
    [renamed] = await client.update_profiles([Profile("ann", "Anna")])
    assert renamed.outcome is Outcome.OK and box.stored_profile("ann").name == "Anna"


async def test_issued_tokens_are_new_and_leave_the_profile_as_it_was():
    box = RongCloudSandbox()
    await box.client().register_users([Profile("ann", "Ann", "https://x/a.png")])
    seen = []

    async def throttle(key, weight):
        seen.append(key)

    client = RongCloudClient(box.config(BASE), httpx.AsyncClient(transport=asgi(box)),
                             throttle=throttle)
    token, unknown = await client.issue_tokens(["ann", "ghost"])
    assert token.outcome is Outcome.OK and token.data["token"] == box.tokens["ann"][-1]
    assert len(box.tokens["ann"]) == 2
    assert box.stored_profile("ann") == Profile("ann", "Ann", "https://x/a.png")
    assert unknown.outcome is Outcome.REJECTED and "user_id" in unknown.message
    assert "ghost" not in box.users
    # Throttled under the keys of the endpoints they use.
    assert sorted(seen) == ["get_profiles", "get_profiles", "register"]


# -- messages --------------------------------------------------------------------------------

async def test_send_batches_by_recipient_and_weighs_each_call_by_its_recipients():
    box = RongCloudSandbox()
    seen = []

    async def throttle(key, weight):
        seen.append((key, weight))

    client = RongCloudClient(box.config(BASE), httpx.AsyncClient(transport=asgi(box)),
                             throttle=throttle)
    recipients = [f"r{i}" for i in range(150)] + ["bad id"]
    results = await client.send("ann", recipients, Message(text="héllo 你好"))
    assert sorted(seen) == [("send", 50), ("send", 100)]
    assert all(r.outcome is Outcome.OK for r in results[:150])
    assert results[150].outcome is Outcome.REJECTED and "recipient" in results[150].message
    assert box.inbox("r7") == [{"from": "ann", "object_name": "RC:TxtMsg", "text": "héllo 你好",
                                "msg_id": results[7].data["msg_id"]}]
    assert len({r.data["msg_id"] for r in results[:150]}) == 150


async def test_send_custom_content_and_refuse_an_oversized_message_without_a_call():
    box = RongCloudSandbox()
    client, _ = client_for(box, custom_object_name="App:Card")
    [ok] = await client.send("ann", ["bob"], Message(custom={"card": {"id": 7}}))
    assert ok.outcome is Outcome.OK
    assert box.inbox("bob")[0]["custom"] == {"card": {"id": 7}}
    assert box.inbox("bob")[0]["object_name"] == "App:Card"
    big = await client.send("ann", ["bob", "cat"], Message(text="x" * (128 * 1024)))
    assert [r.outcome for r in big] == [Outcome.REJECTED] * 2
    assert "content:" in big[0].message and box.calls["send"] == 1


async def test_the_sandbox_counts_messages_not_calls_against_the_send_limit():
    box = RongCloudSandbox(rate_limits={"send": 120})
    results = await box.client().send("ann", [f"r{i}" for i in range(200)], Message(text="hi"))
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {Outcome.OK: 100, Outcome.RATE_LIMITED: 100}  # 100 + 100 > 120
    assert {r.code for r in results if r.outcome is Outcome.RATE_LIMITED} == {"1008"}
    assert sum(len(box.inbox(f"r{i}")) for i in range(200)) == 100
    assert box.max_per_second("send") == 100


async def test_send_group_three_groups_a_call_to_every_member():
    box = RongCloudSandbox()
    client = box.client()
    for i in range(4):
        result = await client.create_group(Group(f"g{i}", f"G{i}", "ann", [f"m{i}", "all"]))
        assert result.outcome is Outcome.OK
    seen = []

    async def throttle(key, weight):
        seen.append((key, weight))

    client.throttle = throttle
    results = await client.send_group("ann", ["g0", "g1", "g2", "g3"], Message(text="hey"))
    assert all(r.outcome is Outcome.OK for r in results)
    assert sorted(seen) == [("send_group", 1), ("send_group", 3)]
    assert [m["group"] for m in box.inbox("all")] == ["g0", "g1", "g2", "g3"]
    assert box.inbox("m2") == [{"from": "ann", "group": "g2", "object_name": "RC:TxtMsg",
                                "text": "hey", "msg_id": results[2].data["msg_id"]}]


async def test_broadcast_reaches_every_user_or_is_refused_with_1008_when_not_enabled():
    box = RongCloudSandbox()
    await register(box, "ann", "bob")
    result = await box.client().broadcast("ann", Message(text="news"))
    assert result.outcome is Outcome.OK and result.data["msg_id"]
    assert [m["text"] for m in box.inbox("bob")] == ["news"]
    assert box.inbox("bob")[0]["broadcast"] is True

    off = RongCloudSandbox(broadcast_enabled=False)
    await register(off, "ann")
    refused = await off.client().broadcast("ann", Message(text="news"))
    assert (refused.outcome, refused.code) == (Outcome.RATE_LIMITED, "1008")
    assert "not enabled" in refused.message
    assert off.inbox("ann") == []


# -- groups and friends ----------------------------------------------------------------------

async def test_create_a_group_larger_than_one_call_then_again():
    box = RongCloudSandbox()
    client = box.client()
    members = [f"m{i}" for i in range(1500)]
    result = await client.create_group(Group("team1", "Team", "ann", members))
    assert result.outcome is Outcome.OK and result.data["group_id"] == "team1"
    assert box.group_members("team1") == {"ann", *members}
    assert (box.calls["create_group"], box.calls["add_members"]) == (1, 1)
    again = await client.create_group(Group("team1", "Team", "ann", members[:3]))
    assert again.outcome is Outcome.OK and box.duplicates["create_group"] == 1
    assert box.groups["team1"]["name"] == "Team"

    bad = await client.create_group(Group("bad id", "", "ann", ["x y"]))
    assert bad.outcome is Outcome.REJECTED
    for field in ("group_id", "name", "members"):
        assert field in bad.message
    assert box.calls["create_group"] == 2


async def test_add_members_reports_each_member():
    box = RongCloudSandbox()
    client = box.client()
    await client.create_group(Group("g1", "G", "ann", ["bob"]))
    results = await client.add_members("g1", "ann", ["bob", "cat", "no way"])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.REJECTED]
    assert "members" in results[2].message
    assert box.group_members("g1") == {"ann", "bob", "cat"}
    assert box.duplicates["add_members"] == 1  # bob was there already


async def test_import_friends_adds_mutual_friends_directly():
    box = RongCloudSandbox()
    client = box.client()
    results = await client.import_friends("ann", ["bob", "cat", "ann"])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.REJECTED]
    assert box.friends("ann") == {"bob", "cat"} and box.friends("bob") == {"ann"}
    await client.import_friends("bob", ["ann"])
    assert box.duplicates["import_friends"] == 1

    off = RongCloudSandbox(profile_hosting=False)
    [refused] = await off.client().import_friends("ann", ["bob"])
    assert (refused.outcome, refused.code) == (Outcome.REJECTED, "1009")
    assert "not enabled" in refused.message and off.friends("ann") == set()


def test_capabilities_leave_out_what_the_vendor_cannot_do():
    assert not RongCloudClient.supports(Operation.LIST_USERS)
    assert RongCloudClient.supports(Operation.IMPORT_FRIENDS)


# -- limits and faults -----------------------------------------------------------------------

async def test_an_over_limit_burst_is_rate_limited():
    # One fixed instant: on the wall clock the burst may straddle two windows.
    box = RongCloudSandbox(rate_limits={"register": 3}, clock=lambda: 1_000_000.5)
    results = await box.client().register_users([Profile(f"u{i}", "A") for i in range(8)])
    assert Counter(r.outcome for r in results) == {Outcome.OK: 3, Outcome.RATE_LIMITED: 5}
    assert box.over_limit["register"] == 5 and len(box.users) == 3


async def test_a_server_error_is_retryable_and_a_failed_send_may_have_been_delivered():
    box = RongCloudSandbox(faults=Faults(error_rate=1.0))
    client = box.client()
    [registered] = await client.register_users([Profile("ann", "Ann")])
    assert (registered.outcome, registered.code) == (Outcome.RETRYABLE, "1000")
    assert not registered.maybe_delivered
    [sent] = await client.send("ann", ["bob"], Message(text="hi"))
    assert sent.outcome is Outcome.RETRYABLE and sent.maybe_delivered


async def test_a_timeout_is_retryable_and_maybe_delivered():
    box = RongCloudSandbox(faults=Faults(timeout_rate=1.0, hang_seconds=0.5))
    client = box.client(timeout=0.05)
    results = await client.send("ann", ["bob", "cat"], Message(text="hi"))
    assert [(r.outcome, r.code, r.maybe_delivered) for r in results] == [
        (Outcome.RETRYABLE, "timeout", True)] * 2


# -- host failover ---------------------------------------------------------------------------

def two_hosts(primary, backup, clock=None):
    transport = Recording({"primary.test": primary, "backup.test": backup})
    config = RongCloudConfig("demo-app-key", "demo-secret",
                             hosts=("http://primary.test", "http://backup.test/"),
                             host_clock=clock or time.monotonic)
    return RongCloudClient(config, httpx.AsyncClient(transport=transport)), transport


async def test_a_refused_connection_moves_to_the_backup_and_back_after_the_cooldown():
    box = RongCloudSandbox()
    now = [1000.0]
    client, transport = two_hosts(None, asgi(box), clock=lambda: now[0])
    [first] = await client.register_users([Profile("ann", "Ann")])
    assert first.outcome is Outcome.OK
    assert transport.hosts == {"primary.test": 1, "backup.test": 1}
    # Within the cooldown the backup is used directly, sends included.
    now[0] += 29
    [sent] = await client.send("ann", ["bob"], Message(text="hi"))
    assert sent.outcome is Outcome.OK and len(box.inbox("bob")) == 1
    assert transport.hosts == {"primary.test": 1, "backup.test": 2}
    # After it, the primary (up again) is preferred.
    transport.routes["primary.test"] = asgi(box)
    now[0] += 2
    [second] = await client.register_users([Profile("bob", "Bob")])
    assert second.outcome is Outcome.OK
    assert transport.hosts == {"primary.test": 2, "backup.test": 2}


async def test_a_send_refused_at_connect_is_repeated_on_the_backup_it_never_arrived():
    box = RongCloudSandbox()
    client, transport = two_hosts(None, asgi(box))
    [sent] = await client.send("ann", ["bob"], Message(text="once"))
    assert sent.outcome is Outcome.OK
    assert [m["text"] for m in box.inbox("bob")] == ["once"]
    assert transport.hosts == {"primary.test": 1, "backup.test": 1}


async def test_a_5xx_is_repeated_on_the_backup_only_when_repeating_is_safe():
    broken = RongCloudSandbox(faults=Faults(error_rate=1.0))
    box = RongCloudSandbox()
    client, transport = two_hosts(asgi(broken), asgi(box))
    [registered] = await client.register_users([Profile("ann", "Ann")])
    assert registered.outcome is Outcome.OK and box.stored_profile("ann") is not None

    client, transport = two_hosts(asgi(broken), asgi(box))
    [sent] = await client.send("ann", ["bob"], Message(text="hi"))
    assert sent.outcome is Outcome.RETRYABLE and sent.maybe_delivered
    assert box.inbox("bob") == [] and transport.hosts == {"primary.test": 1}
    [later] = await client.send("ann", ["bob"], Message(text="hi"))  # now on the backup
    assert later.outcome is Outcome.OK and transport.hosts["backup.test"] == 1


async def test_when_every_host_is_down_the_call_is_retryable_not_delivered():
    client, transport = two_hosts(None, None)
    [result] = await client.register_users([Profile("ann", "Ann")])
    assert (result.outcome, result.maybe_delivered) == (Outcome.RETRYABLE, False)
    assert sum(transport.hosts.values()) == 2  # tried once on each, no more
