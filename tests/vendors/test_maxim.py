"""Maxim: the real client against the in-memory sandbox over ASGI, checked
against the sandbox's own state."""

import hashlib
import time

import httpx
import pytest

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile
from imshift.vendors.client import CallFailed
from imshift.vendors.maxim import (MaximClient, MaximConfig, acting_as, admin_headers, expires_at,
                                   transaction_id)
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.maxim import MaximSandbox

BASE = "http://sandbox.test"


@pytest.fixture
def sandbox():
    return MaximSandbox()


@pytest.fixture
async def client(sandbox):
    client = sandbox.client(BASE)
    yield client
    await client.http.aclose()


@pytest.fixture
async def raw(sandbox):
    """Plain httpx to the sandbox, bypassing the client's own checks."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app),
                                 base_url=BASE) as http:
        yield http


def admin(sandbox, **extra):
    return {"app_id": sandbox.app_id, "access-token": sandbox.access_token, **extra}


async def register(client, *names):
    results = await client.register_users([Profile(n, name=n.title()) for n in names])
    assert all(r.outcome is Outcome.OK for r in results), results
    return [r.data["user_id"] for r in results]


# -- auth headers, ids and secrets ------------------------------------------------------


def test_headers_match_the_quick_start_example():
    # The quick start's curl: app_id welovemaxim, an admin access-token, user_id 2302128618880.
    config = MaximConfig(app_id="welovemaxim", access_token="eyJ0eXAi.example")
    assert admin_headers(config) == {"app_id": "welovemaxim", "access-token": "eyJ0eXAi.example"}
    assert {**admin_headers(config), **acting_as(user_id=2302128618880)} == {
        "app_id": "welovemaxim", "access-token": "eyJ0eXAi.example", "user_id": "2302128618880"}
    assert acting_as(group_id=2306414607729)["group_id"] == "2306414607729"


def test_secrets_stay_out_of_reprs():
    config = MaximConfig(app_id="a", access_token="very-secret-token")
    assert "very-secret-token" not in repr(config)
    assert config.api_endpoint == "https://api.maximtop.com"


def test_transaction_id_is_a_stable_positive_int64_per_batch():
    targets = [2199040544800, 2199040544816]
    digest = hashlib.sha256(b"job-7:chunk-3|1|2199040544800,2199040544816").digest()
    assert transaction_id("job-7:chunk-3", 1, targets) == int.from_bytes(digest[:8], "big") >> 1
    assert transaction_id("job-7:chunk-3", 1, targets) == 3488045163249423802  # pinned
    others = {transaction_id("job-7:chunk-3", 1, targets[:1]), transaction_id("job-7:chunk-3", 2, targets),
              transaction_id("job-7:chunk-4", 1, targets)}
    assert len(others) == 3 and 3488045163249423802 not in others
    assert all(0 < t < 2 ** 63 for t in others)


def test_token_expiry_is_given_in_seconds():
    assert expires_at(1_700_000_000_000) == 1_700_000_000  # milliseconds, as Maxim's timestamps
    assert expires_at(1_700_000_000) == 1_700_000_000
    assert expires_at(0) is None and expires_at(None) is None


# -- users ------------------------------------------------------------------------------


async def test_register_returns_maxim_ids_and_passwords_and_sets_profiles(client, sandbox):
    profiles = [Profile("ann_1", "Ann ☃ 安", "https://cdn/a.png", {"description": "hi"}),
                Profile("Bob", "Bob")]
    results = await client.register_users(profiles)
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
    for profile, result in zip(profiles, results, strict=True):
        user_id = result.data["user_id"]
        assert user_id == sandbox.user_id_of(profile.user_id) and user_id.isdigit()
        assert result.data["password"] == sandbox.password_of(user_id)
        assert result.data["password"] not in repr(result)
        stored = sandbox.stored_profile(user_id)
        assert (stored.name, stored.avatar, dict(stored.extra)) == (profile.name, profile.avatar,
                                                                     dict(profile.extra))
    assert sandbox.accepted["register"] == 1  # one batch call
    assert sandbox.accepted["update_profile"] == 2  # profile batch + avatar batch


async def test_register_batches_by_the_configured_size(sandbox):
    config = MaximConfig(app_id=sandbox.app_id, access_token=sandbox.access_token, api_endpoint=BASE,
                         batch_sizes={Operation.REGISTER: 2})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as http:
        client = MaximClient(config, http)
        results = await client.register_users([Profile(f"u{i}") for i in range(5)])
    assert all(r.outcome is Outcome.OK for r in results)
    assert sandbox.accepted["register"] == 3
    assert len(sandbox.users) == 5


async def test_existing_user_is_exists_with_its_id_and_profile_updated(client, sandbox):
    [ann] = await register(client, "ann")
    results = await client.register_users([Profile("ann", "Ann again"), Profile("cat", "Cat")])
    assert [r.outcome for r in results] == [Outcome.EXISTS, Outcome.OK]
    assert results[0].code == "10004"
    assert results[0].data["user_id"] == ann  # found with GET /roster/name
    assert "password" not in results[0].data  # the account keeps its own password
    assert sandbox.duplicates["register"] == 1
    assert sandbox.stored_profile(ann).name == "Ann again"
    assert len(sandbox.users) == 2


async def test_invalid_usernames_are_rejected_without_a_call_while_valid_rows_go(client, sandbox):
    bad = ["12345", "maxim_bot", "MTAx", "a-b", "ann b", ""]
    results = await client.register_users([Profile(n) for n in bad] + [Profile("good_1")])
    for result in results[:-1]:
        assert result.outcome is Outcome.REJECTED and result.code == "invalid"
        assert result.message.startswith("user_id:")
    assert results[-1].outcome is Outcome.OK
    assert [u.username for u in sandbox.users.values()] == ["good_1"]
    extra = await client.register_users([Profile("dan", extra={"gender": "1"})])
    assert extra[0].message == "gender: not a profile field this vendor accepts"
    assert sandbox.calls["register"] == 1


async def test_sandbox_refuses_bad_usernames_itself(raw, sandbox):
    reply = await raw.post("/user/register/batch", headers=admin(sandbox),
                           json={"list": [{"username": "maxim_x", "password": "p"},
                                          {"username": "ok_name", "password": "p"},
                                          {"username": "007", "password": "p"}]})
    assert reply.status_code == 200
    items = reply.json()["data"]
    assert [i["success"] for i in items] == [False, True, False]
    assert items[0]["reason"].startswith("10002: username:")
    one = await raw.post("/user/register/v2", headers={"app_id": sandbox.app_id},
                         json={"username": "has space", "password": "p"})
    assert one.json()["code"] == 10002 and one.json()["message"].startswith("username:")
    assert list(sandbox.by_username) == ["ok_name"]


async def test_update_and_read_profiles(client, sandbox):
    ann, bob = await register(client, "ann", "bob")
    results = await client.update_profiles([
        Profile(ann, "Änne", "https://cdn/x.png", {"public_info": "pub", "private_info": "priv"}),
        Profile(bob, avatar="https://cdn/b.png"),
        Profile("ann", "not a maxim id"),
        Profile("2199040599999", "nobody"),
    ])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.REJECTED, Outcome.REJECTED]
    assert results[2].code == "invalid" and results[2].message.startswith("user_id:")
    assert results[3].code == "10000" and "user_id" in results[3].message
    profiles = await client.get_profiles([ann, bob, "2199040599999", "x"])
    assert profiles[0] == Profile(ann, "Änne", "https://cdn/x.png",
                                  {"public_info": "pub", "private_info": "priv"})
    assert profiles[1] == Profile(bob, "Bob", "https://cdn/b.png")  # name kept
    assert profiles[2:] == [None, None]
    assert profiles[0] == sandbox.stored_profile(ann)


async def test_issue_tokens_resets_the_password_and_logs_in(client, sandbox):
    ann, bob = await register(client, "ann", "bob")
    seen = []

    async def throttle(key, weight):
        seen.append(key)

    client.throttle = throttle
    results = await client.issue_tokens([ann, bob, "2199040599999"])
    assert [r.outcome for r in results[:2]] == [Outcome.OK, Outcome.OK]
    for user_id, result in zip((ann, bob), results, strict=False):  # the third is the unknown id
        assert sandbox.tokens[result.data["token"]][0] == int(user_id)
        assert result.data["password"] == sandbox.password_of(user_id)
        assert abs(result.data["expires_at"] - (time.time() + 7 * 86400)) < 60
        assert result.data["token"] not in repr(result)
    assert results[2].outcome is Outcome.REJECTED and results[2].code == "10000"
    assert seen == ["issue_token"] * 5  # two calls per token, the unknown user stops at the first


async def test_list_users_pages_through_everyone(client, sandbox, raw):
    await register(client, "a1", "a2", "a3", "a4", "a5")
    names = ["a1", "a2", "a3", "a4", "a5"]  # listed by username, the app's identity
    assert [u async for u in client.list_users(page_size=2)] == names
    assert sandbox.accepted["list_users"] == 3
    assert [u async for u in client.list_users(page_size=5000)] == names  # clamped to 200
    too_big = await raw.get("/user/list", params={"page_size": 201}, headers=admin(sandbox))
    assert too_big.json()["code"] == 10002 and too_big.json()["message"].startswith("page_size")


# -- messages ---------------------------------------------------------------------------


async def test_send_delivers_once_per_dedup_key(client, sandbox):
    ann, bob, cat = await register(client, "ann", "bob", "cat")
    first = await client.send(ann, [bob, cat], Message(text="hello 你好"), dedup_key="job1:0")
    again = await client.send(ann, [bob, cat], Message(text="hello 你好"), dedup_key="job1:0")
    assert all(r.outcome is Outcome.OK for r in first + again)
    assert [m["text"] for m in sandbox.inbox(bob)] == ["hello 你好"]
    assert sandbox.inbox(cat)[0]["from"] == ann
    assert sandbox.duplicates["send"] == 1
    await client.send(ann, [bob], Message(custom={"kind": "card", "n": 1}))
    await client.send(ann, [bob], Message(custom={"kind": "card", "n": 1}))  # no key: both delivered
    assert [m.get("custom") for m in sandbox.inbox(bob)[1:]] == [{"kind": "card", "n": 1}] * 2


async def test_send_splits_at_500_targets_and_isolates_a_bad_recipient(client, sandbox, raw):
    [ann] = await register(client, "ann")
    users = await client.register_users([Profile(f"r{i}") for i in range(501)])
    recipients = [r.data["user_id"] for r in users]
    results = await client.send(ann, recipients, Message(text="hi"), dedup_key="k")
    assert all(r.outcome is Outcome.OK for r in results)
    assert sandbox.accepted["send"] == 2
    assert all(len(sandbox.inbox(r)) == 1 for r in recipients)

    over = await raw.post("/message/send", headers=admin(sandbox), json={
        "targets": [int(r) for r in recipients], "type": 1, "content": "x", "content_type": 0})
    assert over.json()["code"] == 12005 and over.json()["message"].startswith("targets")

    mixed = await client.send(ann, [recipients[0], "2199040599999", "nope"], Message(text="2"))
    assert [r.outcome for r in mixed] == [Outcome.OK, Outcome.REJECTED, Outcome.REJECTED]
    assert mixed[1].code == "10000" and "targets" in mixed[1].message
    assert mixed[2].code == "invalid" and mixed[2].message.startswith("targets:")
    assert [m["text"] for m in sandbox.inbox(recipients[0])] == ["hi", "2"]
    bad_sender = await client.send("ann", [recipients[0]], Message(text="3"))
    assert bad_sender[0].message.startswith("from_user_id:")


async def test_groups_create_invite_and_send(client, sandbox):
    config = MaximConfig(app_id=sandbox.app_id, access_token=sandbox.access_token, api_endpoint=BASE,
                         batch_sizes={Operation.ADD_MEMBERS: 2})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as http:
        small = MaximClient(config, http)
        owner, *members = await register(small, "own", "m1", "m2", "m3", "m4", "m5")
        created = await small.create_group(Group("app-g1", "Team ☃", owner, [owner, *members]))
        assert created.outcome is Outcome.OK
        group_id = created.data["group_id"]
        assert sandbox.group_members(group_id) == {owner, *members}
        assert sandbox.groups[int(group_id)].owner == int(owner)
        assert sandbox.accepted["create_group"] == 1 and sandbox.accepted["add_members"] == 2

        [newbie] = await register(small, "newbie")
        added = await small.add_members(group_id, owner, [newbie, members[0], "2199040599999"])
        assert [r.outcome for r in added] == [Outcome.OK, Outcome.EXISTS, Outcome.REJECTED]
        assert added[1].code == "20017" and added[2].code == "10000"
        assert sandbox.duplicates["add_members"] == 1
        assert newbie in sandbox.group_members(group_id)

        sent = await small.send_group(owner, [group_id], Message(text="all hands"), dedup_key="g")
        await small.send_group(owner, [group_id], Message(text="all hands"), dedup_key="g")
        assert sent[0].outcome is Outcome.OK
        assert [m["group"] for m in sandbox.inbox(members[4])] == [group_id]
        assert sandbox.inbox(owner) == []
        assert sandbox.duplicates["send_group"] == 1
        missing = await small.send_group(owner, ["2306414699999"], Message(text="x"))
        assert missing[0].outcome is Outcome.REJECTED and missing[0].code == "20001"
        nameless = await small.create_group(Group("g2", "", owner))
        assert nameless.code == "invalid" and nameless.message == "name: required"


async def test_broadcast_reaches_every_user(client, sandbox):
    ann, bob, cat = await register(client, "ann", "bob", "cat")
    result = await client.broadcast(ann, Message(text="news"))
    assert result.outcome is Outcome.OK and result.data["send_num"] == 2
    assert [m["text"] for m in sandbox.inbox(bob)] == ["news"] == [m["text"] for m in sandbox.inbox(cat)]
    assert sandbox.inbox(ann) == []


async def test_import_friends(client, sandbox):
    ann, bob, cat = await register(client, "ann", "bob", "cat")
    results = await client.import_friends(ann, [bob, cat, ann, "2199040599999"])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.REJECTED, Outcome.REJECTED]
    assert results[2].message == "list: cannot befriend oneself"
    assert results[3].code == "10000" and results[3].message.startswith("list:")
    assert sandbox.friends(ann) == {bob, cat} and sandbox.friends(bob) == {ann}
    again = await client.import_friends(ann, [bob, cat])
    assert [r.outcome for r in again] == [Outcome.EXISTS, Outcome.EXISTS]
    assert again[0].code == "10005"
    assert sandbox.duplicates["import_friends"] == 2


# -- failures ---------------------------------------------------------------------------


async def test_wrong_token_is_auth_for_every_item(sandbox):
    client = sandbox.client(BASE, wrong_secret=True)
    results = await client.register_users([Profile("ann"), Profile("bob")])
    assert [r.outcome for r in results] == [Outcome.AUTH, Outcome.AUTH]
    assert results[0].code == "10008"
    assert sandbox.users == {} and sandbox.calls["register"] == 0
    assert client.config.access_token not in results[0].message
    with pytest.raises(CallFailed) as failed:
        await client.get_profiles(["2199040544800"])
    assert failed.value.result.outcome is Outcome.AUTH


async def test_sandbox_auth_codes(raw, sandbox):
    no_token = await raw.get("/user/list", headers={"app_id": sandbox.app_id})
    no_app = await raw.get("/user/list", headers={"access-token": sandbox.access_token})
    other_app = await raw.get("/user/list", headers=admin(sandbox, app_id="someone-else"))
    assert no_token.status_code == 200
    assert [r.json()["code"] for r in (no_token, no_app, other_app)] == [10003, 40000, 40000]


async def test_expired_admin_token_is_auth(client, sandbox):
    [ann] = await register(client, "ann")
    sandbox.admin_token_expired = True
    results = await client.issue_tokens([ann])
    assert results[0].outcome is Outcome.AUTH and results[0].code == "402"


async def test_over_the_limit_is_rate_limited():
    sandbox = MaximSandbox(rate_limits={"register": 1}, clock=lambda: 1000.0)
    client = sandbox.client(BASE)
    first = await client.register_users([Profile("ann")])
    second = await client.register_users([Profile("bob"), Profile("cat")])
    assert first[0].outcome is Outcome.OK
    assert [r.outcome for r in second] == [Outcome.RATE_LIMITED] * 2
    assert second[0].retry_after == 1.0
    assert sandbox.over_limit["register"] == 1 and len(sandbox.users) == 1


async def test_server_error_is_retryable():
    sandbox = MaximSandbox(faults=Faults(error_rate=1.0))
    client = sandbox.client(BASE)
    results = await client.register_users([Profile("ann")])
    assert results[0].outcome is Outcome.RETRYABLE and results[0].code == "http 500"
    assert not results[0].maybe_delivered and sandbox.users == {}


async def test_timeout_is_retryable_and_maybe_delivered(client, sandbox):
    ann, bob = await register(client, "ann", "bob")
    sandbox.faults = Faults(timeout_rate=1.0, hang_seconds=0.3)
    client.timeout = 0.05
    results = await client.send(ann, [bob], Message(text="hi"), dedup_key="t")
    assert results[0].outcome is Outcome.RETRYABLE and results[0].code == "timeout"
    assert results[0].maybe_delivered
    assert sandbox.inbox(bob) == []
