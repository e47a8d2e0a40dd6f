"""OpenIM client against the OpenIM sandbox (v3 and v2), over in-process HTTP."""

import asyncio
import itertools
import re

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from imshift.vendors.vocabulary import FieldRule, Group, Message, Operation, Outcome, Profile, VendorRules
from imshift.vendors.openim import OpenIMClient, OpenIMConfig, new_operation_id
from imshift.vendors.openim_v3 import RULES_V3
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.openim import OpenIMSandbox

_ids = itertools.count()


def uid() -> str:
    return f"u_{next(_ids):06d}"


async def with_users(box, count, **kwargs):
    """A client (on the sandbox's clock) and `count` registered users."""
    client = box.client(**kwargs)
    client.clock = box.clock
    profiles = [Profile(uid(), f"User {i}") for i in range(count)]
    results = await client.register_users(profiles)
    assert all(r.outcome is Outcome.OK for r in results), results
    return client, [p.user_id for p in profiles]


async def raw(box, path, body, headers=None):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app), base_url="http://t") as http:
        return await http.post(path, json=body, headers=headers or {})


async def raw_admin_token(box):
    reply = await raw(box, "/auth/get_admin_token", {"secret": box.secret, "userID": box.admin_user_id},
                      {"operationID": "op1"})
    return reply.json()["data"]["token"]


# -- configuration and the operationID ------------------------------------------------------

def test_config_keeps_the_secret_out_of_repr_and_errors():
    config = OpenIMConfig(secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(config)
    assert config.base_url == "http://127.0.0.1:10002" and config.platform_id == 5
    with pytest.raises(ValueError, match="secret") as error:
        OpenIMConfig(secret="x" * 33)
    assert "x" * 33 not in str(error.value)
    with pytest.raises(ValueError, match="platform_id"):
        OpenIMConfig(secret="s", platform_id=10)  # Admin: the server refuses user tokens for it
    with pytest.raises(ValueError, match="platform_id"):
        OpenIMConfig(secret="s", platform_id=9, api_version="v2")  # v2 register takes 1..7
    with pytest.raises(ValueError, match="api_version"):
        OpenIMConfig(secret="s", api_version="v4")


def test_operation_ids_are_fresh_random_hex():
    ids = {new_operation_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_every_call_carries_a_fresh_operation_id_where_the_version_reads_it(version):
    # The v3 sandbox reads only the header, the v2 one only the body.
    box = OpenIMSandbox(api_version=version)
    client, users = await with_users(box, 3)
    await client.get_profiles(users)
    await client.issue_tokens(users)
    assert len(box.operation_ids) == box.calls.total() >= 6
    assert len(set(box.operation_ids)) == len(box.operation_ids)


async def test_v3_refuses_a_call_without_operation_id_or_token():
    box = OpenIMSandbox()
    reply = await raw(box, "/user/get_users_info", {"userIDs": []}, {"token": await raw_admin_token(box)})
    assert (reply.status_code, reply.json()["errCode"]) == (200, 1001)
    assert "operationID" in reply.json()["errMsg"]
    reply = await raw(box, "/user/get_users_info", {"userIDs": []}, {"operationID": "op2"})
    assert reply.json()["errCode"] == 1001 and "token" in reply.json()["errMsg"]


async def test_v2_wants_operation_id_in_the_body():
    box = OpenIMSandbox(api_version="v2")
    reply = await raw(box, "/auth/user_token", {"secret": box.secret, "platform": 5, "userID": "imAdmin"},
                      {"operationID": "in-the-header-is-not-enough"})
    assert (reply.status_code, reply.json()["errCode"]) == (400, 400)
    assert "operationID" in reply.json()["errMsg"]


# -- the admin token ------------------------------------------------------------------------

async def test_the_admin_token_is_fetched_once_for_concurrent_callers():
    box = OpenIMSandbox()
    _, users = await with_users(box, 4)
    client = box.client()
    await asyncio.gather(*(client.get_profiles(users) for _ in range(20)))
    await client.issue_tokens(users)
    assert box.calls["auth"] == 2  # one for with_users' client, one for this one


async def test_an_expiring_admin_token_is_replaced_before_the_server_refuses_it():
    now = [1_000_000.0]
    box = OpenIMSandbox(token_ttl=3600, clock=lambda: now[0])
    client, users = await with_users(box, 2)
    now[0] += 3600 - 30  # within the client's margin
    assert all(await client.get_profiles(users))
    assert box.calls["auth"] == 2
    assert box.calls["get_profiles"] == 1  # no refused call


async def test_a_token_the_server_dropped_is_replaced_once_and_shared():
    now = [1_000_000.0]
    box = OpenIMSandbox(clock=lambda: now[0])
    first, users = await with_users(box, 2)
    second = box.client()
    second.clock = box.clock
    await second.get_profiles(users)  # a new admin token leaves the first one 5 minutes
    now[0] += 301
    results = await asyncio.gather(*(first.issue_tokens(users) for _ in range(5)))
    assert all(r.outcome is Outcome.OK for batch in results for r in batch)
    assert box.calls["auth"] == 3  # first, second, and one shared refresh


async def test_a_token_refused_again_after_the_refresh_is_auth():
    box = OpenIMSandbox(token_ttl=0)  # every token is born expired
    [result] = await box.client().issue_tokens(["someone"])
    assert result.outcome is Outcome.AUTH and result.code == "1501"
    assert box.calls["auth"] == 2
    assert box.calls["issue_token"] == 0  # both refused before the sandbox counts a call


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_a_wrong_secret_is_auth_for_every_item(version):
    box = OpenIMSandbox(api_version=version)
    client = box.client(wrong_secret=True)
    profiles = [Profile(uid(), "Ann"), Profile(uid(), "Bob")]
    results = await client.register_users(profiles)
    assert [r.outcome for r in results] == [Outcome.AUTH] * 2
    assert results[0].code == ("1002" if version == "v3" else "401")
    assert client.config.secret not in results[0].message
    assert all(box.stored_profile(p.user_id) is None for p in profiles)


async def test_v2_echoes_the_refused_token_but_results_never_carry_it():
    box = OpenIMSandbox(api_version="v2", token_ttl=0)
    with pytest.raises(Exception) as failed:
        await box.client().get_profiles(["a"])
    result = failed.value.result
    assert result.outcome is Outcome.AUTH
    assert "token" in result.message and "sbx." not in result.message


# -- faults and limits ----------------------------------------------------------------------

async def test_the_server_limiter_is_rate_limited_with_retry_after():
    box = OpenIMSandbox(rate_limits={"register": 1}, clock=lambda: 5000.5)
    client = box.client()
    [first] = await client.register_users([Profile(uid(), "Ann")])
    second = await client.register_users([Profile(uid(), "Bob"), Profile(uid(), "Cy")])
    assert first.outcome is Outcome.OK
    assert [r.outcome for r in second] == [Outcome.RATE_LIMITED] * 2
    assert second[0].retry_after == 1.0 and second[0].code == "http 429"  # as the base reads HTTP 429
    assert box.over_limit["register"] == 1


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_an_internal_error_is_retryable_and_a_send_may_have_been_delivered(version):
    # v3 answers HTTP 200 with errCode 500; v2 an HTTP 500 with errCode 500.
    box = OpenIMSandbox(api_version=version)
    client, users = await with_users(box, 2)
    box.faults = Faults(error_rate=1.0)
    results = await client.send(users[0], users[1:], Message(text="hi"))
    assert results[0].outcome is Outcome.RETRYABLE and results[0].code == "500"
    assert results[0].maybe_delivered  # a send is not idempotent: the server may have sent it
    assert box.inbox(users[1]) == []
    [group] = await client.send_group(users[0], ["g"], Message(text="hi"))
    assert group.outcome is Outcome.RETRYABLE and group.maybe_delivered
    [registered] = await client.register_users([Profile(uid(), "Ann")])
    assert registered.outcome is Outcome.RETRYABLE and not registered.maybe_delivered  # idempotent


async def test_a_hanging_call_is_retryable_and_may_have_been_delivered():
    box = OpenIMSandbox()
    _, users = await with_users(box, 2)
    box.faults = Faults(timeout_rate=1.0, hang_seconds=2)
    client = box.client(timeout=0.05)
    [result] = await client.send(users[0], users[1:], Message(text="hi"))
    assert result.outcome is Outcome.RETRYABLE and result.code == "timeout" and result.maybe_delivered


# -- register, profiles, tokens -------------------------------------------------------------

async def test_register_stores_the_profiles():
    box = OpenIMSandbox()
    profiles = [Profile(uid(), "Zoë", "https://a.example/z.png", {"ex": '{"lvl":1}'}), Profile(uid(), "李雷")]
    results = await box.client().register_users(profiles)
    assert [r.outcome for r in results] == [Outcome.OK] * 2
    assert [box.stored_profile(p.user_id) for p in profiles] == profiles
    assert box.calls["register"] == 1


async def test_a_batch_with_existing_users_registers_the_rest_in_three_calls():
    box = OpenIMSandbox()
    client, old = await with_users(box, 2)
    new = [uid(), uid(), uid()]
    profiles = [Profile(i, "N") for i in [new[0], old[0], new[1], old[1], new[2], new[0]]]
    results = await client.register_users(profiles)
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.EXISTS, Outcome.OK, Outcome.EXISTS,
                                            Outcome.OK, Outcome.EXISTS]
    assert results[1].code == "1102" and results[5].code == "repeat"
    assert all(box.stored_profile(i) for i in new)
    assert box.duplicates["register"] == 2
    assert box.calls["register"] == 1 + 2 and box.calls["get_profiles"] == 1


async def test_invalid_rows_are_rejected_client_side_and_the_rest_still_go():
    box = OpenIMSandbox()
    good = uid()
    results = await box.client().register_users([
        Profile("has-dash", "A"), Profile(uid(), ""),
        Profile(uid(), "A", avatar="é" * 513), Profile(uid(), "A", extra={"gender": "1"}), Profile(good, "Good")])
    assert [r.outcome for r in results] == [Outcome.REJECTED] * 4 + [Outcome.OK]
    for result, field in zip(results, ["user_id", "name", "avatar", "gender"], strict=False):  # the 5th is ok
        assert result.code == "invalid" and result.message.startswith(field), result
    assert box.calls["register"] == 1 and box.stored_profile(good).name == "Good"


async def test_the_sandbox_checks_user_ids_itself():
    box = OpenIMSandbox()
    token = await raw_admin_token(box)
    reply = await raw(box, "/user/user_register",
                      {"users": [{"userID": "ok_1", "nickname": "A"}, {"userID": "a:b", "nickname": "B"}]},
                      {"operationID": "op", "token": token})
    assert reply.json()["errCode"] == 1001 and "users[1].userID" in reply.json()["errMsg"]
    assert box.stored_profile("ok_1") is None


async def test_rows_the_server_refuses_are_isolated_by_halving_the_batch():
    box = OpenIMSandbox()
    client = box.client()
    loose = dict(RULES_V3.fields, user_id=FieldRule(max_len=64))  # let "a:b" reach the server
    client.rules = VendorRules(fields=loose, batch_size=RULES_V3.batch_size, rates=RULES_V3.rates)
    ids = [uid() for _ in range(6)] + ["a:b"] + [uid()]
    results = await client.register_users([Profile(i, "N") for i in ids])
    assert [r.outcome for r in results] == [Outcome.OK] * 6 + [Outcome.REJECTED, Outcome.OK]
    assert results[6].code == "1001" and "userID" in results[6].message
    assert all(box.stored_profile(i) for i in ids if i != "a:b")


@settings(max_examples=20, deadline=None)
@given(names=st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=64), min_size=1, max_size=5),
       id_letters=st.text(st.characters(categories=["L", "Nd"]), min_size=1, max_size=8))
def test_unicode_ids_and_names_round_trip(names, id_letters):
    async def round_trip():
        box = OpenIMSandbox()
        client = box.client()
        profiles = [Profile(f"{id_letters}_{i}", name, extra={"ex": name}) for i, name in enumerate(names)]
        results = await client.register_users(profiles)
        assert all(r.outcome is Outcome.OK for r in results), results
        return profiles, await client.get_profiles([p.user_id for p in profiles])

    profiles, read = asyncio.run(round_trip())
    assert read == profiles


async def test_update_changes_only_the_given_fields():
    box = OpenIMSandbox()
    client, [user] = await with_users(box, 1)
    await client.update_profiles([Profile(user, "First", "https://x/1.png", {"ex": "e1"})])
    results = await client.update_profiles([Profile(user, "Second"), Profile("nobody_here", "X")])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.REJECTED]
    assert results[1].code == "1004"
    assert box.stored_profile(user) == Profile(user, "Second", "https://x/1.png", {"ex": "e1"})


async def test_get_profiles_gives_none_for_unknown_ids():
    box = OpenIMSandbox()
    client, users = await with_users(box, 2)
    read = await client.get_profiles([users[1], "nobody_here", users[0]])
    assert [p and p.user_id for p in read] == [users[1], None, users[0]]


async def test_tokens_are_issued_for_the_configured_platform():
    now = [2_000_000.0]
    box = OpenIMSandbox(clock=lambda: now[0])
    client, users = await with_users(box, 2)
    results = await client.issue_tokens([users[0], "imAdmin", "nobody_here", "bad id"])
    assert [r.outcome for r in results] == [Outcome.OK] + [Outcome.REJECTED] * 3
    assert box.token_owner(results[0].data["token"]) == (users[0], 5)
    assert results[0].data["expires_at"] == now[0] + 90 * 86400
    assert results[2].code == "1004" and results[3].message.startswith("user_id")
    assert box.calls["issue_token"] == 2  # the admin and the bad id never left the client


async def test_list_users_pages_through_everyone_but_the_admin():
    box = OpenIMSandbox()
    client, users = await with_users(box, 5)
    assert [u async for u in client.list_users(page_size=2)] == users
    assert box.calls["list_users"] == 3


# -- messages -------------------------------------------------------------------------------

async def test_send_reads_failed_recipients_one_by_one():
    box = OpenIMSandbox(friend_verify=True)
    client, [sender, friend, stranger] = await with_users(box, 3)
    await client.import_friends(sender, [friend])
    results = await client.send(sender, [friend, stranger, "bad id"], Message(text="héllo"))
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.REJECTED, Outcome.REJECTED]
    assert results[0].data["msg_id"] and results[1].code == "1303"
    assert results[2].message.startswith("recipient")
    assert box.inbox(friend) == [{"from": sender, "session": "single", "text": "héllo"}]
    assert box.inbox(stranger) == []
    assert box.calls["send"] == 2  # the batch, and the stranger again alone


async def test_send_splits_recipients_and_carries_custom_content():
    box = OpenIMSandbox()
    client, users = await with_users(box, 251)
    results = await client.send(users[0], users[1:], Message(custom={"kind": "card", "n": 1}))
    assert all(r.outcome is Outcome.OK for r in results)
    assert box.calls["send"] == 3
    assert box.inbox(users[250]) == [{"from": users[0], "session": "single", "custom": {"kind": "card", "n": 1}}]


async def test_send_group_reaches_members_and_refuses_outsiders():
    box = OpenIMSandbox()
    client, [owner, member, outsider] = await with_users(box, 3)
    await client.create_group(Group("grp_msg", "G", owner, [member]))
    ok, refused = await client.send_group(owner, ["grp_msg"], Message(text="hi all")) + \
        await client.send_group(outsider, ["grp_msg"], Message(text="me too"))
    assert ok.outcome is Outcome.OK and ok.data["msg_id"]
    assert refused.outcome is Outcome.REJECTED and refused.code == "1203"
    assert box.inbox(member) == [{"from": owner, "session": "group", "text": "hi all", "group_id": "grp_msg"}]


async def test_broadcast_reaches_every_user():
    box = OpenIMSandbox()
    client, users = await with_users(box, 4)
    result = await client.broadcast(users[0], Message(text="news"))
    assert result.outcome is Outcome.OK and result.data["failed_user_ids"] == []
    assert all(box.inbox(u)[-1]["text"] == "news" for u in users)
    assert box.calls["broadcast"] == 1


# -- groups and friends ---------------------------------------------------------------------

async def test_a_big_group_is_created_then_invited_and_a_repeat_completes_it():
    box = OpenIMSandbox()
    client, users = await with_users(box, 1501)
    owner, members = users[0], users[1:]
    result = await client.create_group(Group("big_1", "Big", owner, [owner, *members]))
    assert result.outcome is Outcome.OK and result.data["group_id"] == "big_1"
    assert box.group_members("big_1") == set(users)
    assert (box.calls["create_group"], box.calls["add_members"]) == (1, 1)
    for lost in members[700:1200]:  # as if the invitation had never happened
        del box.groups["big_1"]["members"][lost]
    again = await client.create_group(Group("big_1", "Big", owner, members))
    assert again.outcome is Outcome.EXISTS and again.code == "1202"
    assert box.group_members("big_1") == set(users)
    assert box.duplicates["create_group"] == 1


async def test_a_group_with_an_unknown_member_is_rejected():
    box = OpenIMSandbox()
    client, [owner] = await with_users(box, 1)
    result = await client.create_group(Group("grp_x", "G", owner, ["nobody_here"]))
    assert result.outcome is Outcome.REJECTED and result.code == "1101"
    assert box.group_members("grp_x") is None


async def test_add_members_sorts_out_members_and_unknown_users():
    box = OpenIMSandbox()
    client, [owner, old, new1, new2] = await with_users(box, 4)
    await client.create_group(Group("grp_add", "G", owner, [old]))
    results = await client.add_members("grp_add", owner, [new1, old, "nobody_here", new2, new1])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.EXISTS, Outcome.REJECTED, Outcome.OK, Outcome.OK]
    assert "nobody_here" in results[2].message
    assert box.group_members("grp_add") == {owner, old, new1, new2}


async def test_import_friends_is_safe_to_repeat_and_names_missing_users():
    box = OpenIMSandbox()
    client, [owner, a, b] = await with_users(box, 3)
    first = await client.import_friends(owner, [a, "nobody_here", owner, b])
    assert [r.outcome for r in first] == [Outcome.OK, Outcome.REJECTED, Outcome.REJECTED, Outcome.OK]
    assert first[1].message.startswith("friend_id") and first[2].code == "invalid"
    again = await client.import_friends(owner, [a, b])
    assert [r.outcome for r in again] == [Outcome.OK, Outcome.OK]
    assert box.friends(owner) == {a, b} and box.friends(a) == {owner}
    assert box.duplicates["import_friends"] == 2


# -- v2 specifics ---------------------------------------------------------------------------

async def test_v2_register_returns_a_token_and_finds_existing_users_behind_its_500():
    box = OpenIMSandbox(api_version="v2")
    client = box.client()
    user = Profile(uid(), "Ann", extra={"gender": "2", "phoneNumber": "+8613800000000", "birth": "946684800",
                                        "email": "ann@example.com", "ex": "x"})
    [first] = await client.register_users([user])
    [again] = await client.register_users([user])
    assert first.outcome is Outcome.OK and box.token_owner(first.data["token"]) == (user.user_id, 5)
    assert again.outcome is Outcome.EXISTS and box.duplicates["register"] == 1
    assert box.stored_profile(user.user_id) == user
    [read] = await client.get_profiles([user.user_id])
    assert read == Profile(user.user_id, "Ann", extra={"gender": "2", "ex": "x"})  # what v2 returns
    [bad] = await client.register_users([Profile(uid(), "B", extra={"gender": "7"})])
    assert bad.outcome is Outcome.REJECTED and bad.message.startswith("gender")


async def test_v2_messages_groups_and_friends():
    box = OpenIMSandbox(api_version="v2", friend_verify=True)
    client, [owner, a, b] = await with_users(box, 3)
    assert [r.outcome for r in await client.import_friends(owner, [a, "nobody_here"])] == [
        Outcome.OK, Outcome.REJECTED]
    sent = await client.send(owner, [a, b], Message(text="hi"))
    assert [r.outcome for r in sent] == [Outcome.OK, Outcome.REJECTED]
    assert box.inbox(a)[0]["text"] == "hi" and box.inbox(b) == []
    assert (await client.create_group(Group("g2", "G", owner, [a]))).outcome is Outcome.OK
    again = await client.create_group(Group("g2", "G", owner, [a, b]))
    assert again.outcome is Outcome.EXISTS and box.group_members("g2") == {owner, a, b}
    added = await client.add_members("g2", owner, [a, "nobody_here"])
    assert [r.outcome for r in added] == [Outcome.EXISTS, Outcome.REJECTED]
    [group_sent] = await client.send_group(owner, ["g2"], Message(text="all"))
    assert group_sent.outcome is Outcome.OK and box.inbox(b)[-1]["text"] == "all"
    assert [u async for u in client.list_users()] == [owner, a, b]
    [token] = await client.issue_tokens([a])
    assert box.token_owner(token.data["token"]) == (a, 5)


def test_a_v2_client_carries_the_v2_rules():
    box = OpenIMSandbox(api_version="v2")
    client = box.client()
    assert isinstance(client, OpenIMClient) and client.version == "v2"
    assert "gender" in client.rules.fields and client.rules.batch_size[Operation.REGISTER] == 1
    assert OpenIMClient.rules.batch_size[Operation.REGISTER] == 1000
