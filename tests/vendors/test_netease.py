"""NetEase Yunxin: CheckSum signing, the open code 414 read per endpoint, the
all-strings form rule, 416 blocks, byte-capped team member slices, and every
capability against the sandbox through real HTTP (ASGI)."""

import hashlib
import json
import time
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile, Unsupported
from imshift.vendors.client import Reply
from imshift.vendors.netease import BASE_URLS, NeteaseClient, NeteaseConfig, checksum
from imshift.vendors.netease_forms import member_slices
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.netease import NeteaseSandbox

BASE = "http://sandbox.test"


def recording_client(box, sent, **kwargs):
    """A client whose outgoing requests are kept in `sent` (an httpx event hook)."""
    async def keep(request):
        sent.append(request)

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app),
                             event_hooks={"request": [keep]})
    return NeteaseClient(box.config(BASE), http, **kwargs)


async def raw_post(box, path, form, *, secret=None, curtime=None, nonce="n0nce"):
    """Call the sandbox directly, signed by hand: the client's checks are bypassed."""
    curtime = curtime or str(int(time.time()))
    headers = {"AppKey": box.app_key, "Nonce": nonce, "CurTime": curtime,
               "CheckSum": checksum(secret or box.app_secret, nonce, curtime),
               "Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        response = await http.post(f"{BASE}/nimserver/{path}", headers=headers,
                                   content=urlencode(form))
    return response.status_code, response.json()


async def registered(box, *ids):
    results = await box.client().register_users([Profile(i, i.title()) for i in ids])
    assert all(r.outcome is Outcome.OK for r in results), results


# -- signing ---------------------------------------------------------------------------

def test_checksum_is_lowercase_hex_sha1_of_secret_nonce_curtime():
    # The documented example's Nonce and CurTime (its secret is not published).
    nonce, curtime = "4tgggergigwow323t23t", "1443592222"
    assert len(curtime) == 10  # UTC seconds, not milliseconds
    # Derived by hand: sha1(b"demo-secret4tgggergigwow323t23t1443592222").
    assert checksum("demo-secret", nonce, curtime) == "33996566c41d37a407c20eb66ae4d9784cf5b5c1"
    assert checksum("0123456789ab", "12345", "1700000000") == \
        "1ac14080b911cad6356c77453836352eec541151"
    assert checksum("demo-secret", nonce, curtime) == hashlib.sha1(
        b"demo-secret" + nonce.encode() + curtime.encode()).hexdigest()
    documented = "9e9db3b6c9abb2e1962cf3e6f7316fcc55583f86"  # same shape as ours
    assert len(documented) == 40 and documented == documented.lower()


async def test_every_request_is_signed_fresh_with_string_form_values():
    box = NeteaseSandbox()
    sent = []
    client = recording_client(box, sent)
    before = int(time.time())
    await client.register_users([Profile(f"user_{i}", f"User {i}") for i in range(40)])
    await client.broadcast("user_1", Message(text="hello"))
    nonces = [r.headers["Nonce"] for r in sent]
    assert len(set(nonces)) == len(sent) == 41
    for request in sent:
        h = request.headers
        assert 0 < len(h["Nonce"]) <= 128
        assert h["CurTime"].isdigit() and len(h["CurTime"]) == 10
        assert before - 1 <= int(h["CurTime"]) <= time.time() + 1
        assert h["CheckSum"] == checksum(box.app_secret, h["Nonce"], h["CurTime"])
        assert h["Content-Type"] == "application/x-www-form-urlencoded;charset=utf-8"
        assert request.url.path.startswith("/nimserver/")
    broadcast = dict(parse_qsl(sent[-1].content.decode()))
    assert broadcast["isOffline"] == "true"  # a boolean goes out as "true"/"false"


def test_config_hosts_and_secret_kept_out_of_repr():
    assert NeteaseConfig("k", "s3cret").url == BASE_URLS["cn"] == "https://api.netease.im/nimserver"
    assert NeteaseConfig("k", "s", region="sg").url == "https://api-sg.netease.im/nimserver"
    assert NeteaseConfig("k", "s", base_url="http://x/nimserver/").url == "http://x/nimserver"
    assert "s3cret" not in repr(NeteaseConfig("k", "s3cret"))


# -- accounts --------------------------------------------------------------------------

async def test_register_lower_cases_accids_and_trusts_the_returned_one():
    box = NeteaseSandbox()
    [result] = await box.client().register_users([
        Profile("Alice.W", "Zoë 张", "https://a/b.png",
                extra={"gender": "2", "email": "a@b.c", "ex": '{"k":1}'})])
    assert result.outcome is Outcome.OK, result
    assert result.data["user_id"] == "alice.w"
    assert result.data["token"] == box.token("alice.w")
    assert box.stored_profile("alice.w") == Profile(
        "alice.w", "Zoë 张", "https://a/b.png", {"gender": "2", "email": "a@b.c", "ex": '{"k":1}'})


async def test_registering_an_existing_accid_is_exists_not_an_error():
    box = NeteaseSandbox()
    await registered(box, "ann")
    [again] = await box.client().register_users([Profile("ANN", "Ann")])
    assert again.outcome is Outcome.EXISTS and again.code == "414"
    assert again.message == "already register"
    assert again.data["user_id"] == "ann"
    assert box.duplicates["register"] == 1


async def test_invalid_rows_are_rejected_locally_and_the_rest_go_out():
    box = NeteaseSandbox()
    results = await box.client().register_users([
        Profile("x" * 33), Profile("bad id!"), Profile("ok_1", "n" * 65),
        Profile("ok_2", extra={"gender": "3"}), Profile("ok_3", extra={"nickname": "x"}),
        Profile("good")])
    assert [r.outcome for r in results[:5]] == [Outcome.REJECTED] * 5
    assert all(r.code == "invalid" for r in results[:5])
    assert "user_id: 33 chars" in results[0].message
    assert "user_id: 'bad id!'" in results[1].message
    assert "name: 65 chars" in results[2].message
    assert "gender" in results[3].message and "nickname" in results[4].message
    assert results[5].outcome is Outcome.OK
    assert box.calls["register"] == 1 and set(box.users) == {"good"}


async def test_the_sandbox_itself_refuses_bad_parameters_naming_them():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob")
    cases = [
        ("user/create.action", {"accid": "bad id!"}, "accid"),
        ("user/create.action", {"accid": "a" * 33}, "accid"),
        ("user/create.action", {"accid": "cat", "gender": "male"}, "gender"),
        ("user/create.action", {"accid": "cat", "name": "n" * 65}, "name"),
        ("msg/broadcastMsg.action", {"body": "hi", "isOffline": "True"}, "isOffline not boolean"),
        ("msg/sendBatchMsg.action", {"fromAccid": "ann", "toAccids": "bob", "type": "0",
                                     "body": '{"msg":"hi"}'}, "toAccids"),
        ("msg/sendBatchMsg.action", {"fromAccid": "ann", "toAccids": '["bob"]', "type": "0",
                                     "body": '{"msg":"hi"}', "returnMsgid": "1"}, "returnMsgid"),
        ("team/create.action", {"tname": "t", "owner": "ann", "members": '["bob"]',
                                "magree": "0", "joinmode": "0"}, "msg"),
        ("team/create.action", {"tname": "t", "owner": "ann", "msg": "hi", "magree": "0",
                                "joinmode": "0", "members": json.dumps(["b" * 30] * 40)},
         "members"),
    ]
    for path, form, named in cases:
        status, body = await raw_post(box, path, form)
        assert status == 200 and body["code"] == 414, (form, body)
        assert named in body["desc"], (form, body)
    assert set(box.users) == {"ann", "bob"} and not box.teams and not box.inboxes


async def test_update_and_read_back_profiles_in_batches_of_200():
    box = NeteaseSandbox()
    ids = [f"u{i:03d}" for i in range(205)]
    await registered(box, *ids)
    [updated] = await box.client().update_profiles([
        Profile("U000", "Ünïcode ✓", extra={"sign": "hi", "mobile": "+852-12345678"})])
    assert updated.outcome is Outcome.OK
    assert box.stored_profile("u000").name == "Ünïcode ✓"
    calls_before = box.calls["get_profiles"]
    profiles = await box.client().get_profiles(["U000", "nobody", "bad id!"] + ids[1:])
    assert box.calls["get_profiles"] - calls_before == 2  # 205 known ids + "nobody"
    assert profiles[0] == Profile("u000", "Ünïcode ✓", "",
                                  {"sign": "hi", "mobile": "+852-12345678"})
    assert profiles[1] is None and profiles[2] is None
    assert [p.user_id for p in profiles[3:]] == ids[1:]
    [unknown] = await box.client().update_profiles([Profile("ghost", "G")])
    assert unknown.outcome is Outcome.REJECTED and "accid" in unknown.message


async def test_issue_tokens_refreshes_at_the_vendor():
    box = NeteaseSandbox()
    await registered(box, "ann")
    old = box.token("ann")
    ok, ghost = await box.client().issue_tokens(["Ann", "ghost"])
    assert ok.outcome is Outcome.OK and ok.data == {"user_id": "ann", "token": box.token("ann")}
    assert box.token("ann") != old
    assert ghost.outcome is Outcome.REJECTED


# -- messages --------------------------------------------------------------------------

async def test_batch_send_rejects_unregistered_recipients_per_item():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat")
    results = await box.client().send("Ann", ["bob", "ghost", "CAT", "bad id!"],
                                      Message(text="héllo"))
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.REJECTED, Outcome.OK,
                                            Outcome.REJECTED]
    assert results[1].code == "unregister" and "ghost" in results[1].message
    assert results[3].code == "invalid" and "toAccids" in results[3].message
    assert [(m["from"], m["text"]) for m in box.inbox("bob")] == [("ann", "héllo")]
    assert box.inbox("cat")[0]["from"] == "ann"
    assert box.calls["send"] == 1


async def test_batch_send_splits_at_500_and_carries_custom_content():
    box = NeteaseSandbox()
    recipients = [f"r{i:03d}" for i in range(501)]
    await registered(box, "ann", *recipients)
    results = await box.client().send("ann", recipients, Message(custom={"kind": "card", "n": 1}))
    assert all(r.outcome is Outcome.OK for r in results)
    assert box.calls["send"] == 2
    assert box.inbox("r500") == [{"from": "ann", "custom": {"kind": "card", "n": 1}, "type": 100,
                                  "msgid": box.inbox("r500")[0]["msgid"]}]
    [too_long] = await box.client().send("ann", ["r001"], Message(text="x" * 5000))
    assert too_long.outcome is Outcome.REJECTED and "body" in too_long.message


async def test_group_send_and_broadcast():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat", "dan")
    group = await box.client().create_group(Group("app-g1", "Team ✓", "ann", ["bob", "cat"]))
    tid = group.data["group_id"]
    sent, missing = await box.client().send_group("ann", [tid, "999"], Message(text="to team"))
    assert sent.outcome is Outcome.OK and sent.data["msg_id"]
    assert missing.outcome is Outcome.REJECTED and missing.code == "803"
    assert [m["text"] for m in box.inbox("bob")] == ["to team"]
    assert box.inbox("bob")[0]["group_id"] == tid
    assert box.inbox("dan") == [] and box.inbox("ann") == []
    result = await box.client().broadcast("ann", Message(text="to everyone"))
    assert result.outcome is Outcome.OK and result.data["msg_id"]
    for user in ("bob", "cat", "dan"):
        assert box.inbox(user)[-1]["text"] == "to everyone"
    assert box.inbox("ann") == []


# -- groups and friends ----------------------------------------------------------------

def test_member_slices_fit_1024_bytes_of_json_in_order():
    members = [f"member_{i:024d}" for i in range(100)]  # 31 characters each
    slices = member_slices(members)
    assert [m for s in slices for m in s] == members
    for s in slices:
        assert len(json.dumps(s, separators=(",", ":")).encode()) <= 1024
    assert len(slices[0]) == 30  # 30 * 34 + 1 = 1021 bytes; 31 would be 1055
    assert member_slices([f"m{i}" for i in range(450)], max_bytes=10_000) == [
        [f"m{i}" for i in range(j, min(j + 200, 450))] for j in (0, 200, 400)]
    assert member_slices([]) == []


async def test_a_big_group_is_created_then_filled_by_slices_under_the_byte_cap():
    box = NeteaseSandbox()
    members = [f"member_{i:024d}" for i in range(100)]
    await registered(box, "owner", *members)
    sent = []
    result = await recording_client(box, sent).create_group(
        Group("app-id", "Big", "OWNER", members + ["owner"]))
    assert result.outcome is Outcome.OK, result
    assert result.data["members_not_added"] == []
    assert box.group_members(result.data["group_id"]) == {"owner", *members}
    assert box.calls["create_group"] == 1 and box.calls["add_members"] == 3
    for request in sent:
        form = dict(parse_qsl(request.content.decode()))
        assert len(form["members"].encode()) <= 1024
        assert form["msg"] and form["magree"] == "0"


async def test_add_members_reports_per_member():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat")
    tid = (await box.client().create_group(Group("g", "G", "ann", []))).data["group_id"]
    results = await box.client().add_members(tid, "ann", ["bob", "bad id!", "CAT"])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.REJECTED, Outcome.OK]
    assert "members" in results[1].message
    assert box.group_members(tid) == {"ann", "bob", "cat"}
    [not_owner] = await box.client().add_members(tid, "bob", ["cat"])
    assert not_owner.outcome is Outcome.REJECTED and not_owner.code == "802"


async def test_import_friends_one_call_each_and_again_is_exists():
    box = NeteaseSandbox()
    await registered(box, "ann", "bob", "cat")
    results = await box.client().import_friends("ann", ["bob", "Cat"])
    assert all(r.outcome is Outcome.OK for r in results)
    assert box.friends("ann") == {"bob", "cat"} and box.friends("bob") == {"ann"}
    [again] = await box.client().import_friends("ann", ["bob"])
    assert again.outcome is Outcome.EXISTS and box.duplicates["import_friends"] == 1
    assert box.calls["import_friends"] == 3


async def test_list_users_is_not_offered():
    box = NeteaseSandbox()
    assert not NeteaseClient.supports(Operation.LIST_USERS)
    with pytest.raises(Unsupported):
        box.client().list_users()


# -- failures --------------------------------------------------------------------------

async def test_a_wrong_secret_is_auth_and_creates_nothing():
    box = NeteaseSandbox()
    results = await box.client(wrong_secret=True).register_users([Profile("ann"), Profile("bob")])
    assert [r.outcome for r in results] == [Outcome.AUTH, Outcome.AUTH]
    assert results[0].code == "414" and results[0].message == "checksum"
    assert not box.users and box.calls["register"] == 0


async def test_a_curtime_more_than_5_minutes_off_is_auth():
    box = NeteaseSandbox(clock=lambda: time.time() + 301)
    [result] = await box.client().register_users([Profile("ann")])
    assert result.outcome is Outcome.AUTH and result.message == "CurTime is expired"
    early = NeteaseSandbox(clock=lambda: time.time() + 290)
    [fine] = await early.client().register_users([Profile("ann")])
    assert fine.outcome is Outcome.OK
    status, body = await raw_post(box, "user/create.action", {"accid": "bob"}, nonce="n" * 129,
                                  curtime=str(int(box.clock())))
    assert body["code"] == 414 and "Nonce" in body["desc"]


async def test_over_the_limit_is_416_rate_limited_with_the_block_period():
    start = int(time.time()) + 0.1  # near real time: the CurTime check must still pass
    now = [start]
    box = NeteaseSandbox(rate_limits={"register": 2, "send": 1}, block_seconds=10,
                         clock=lambda: now[0])
    client = box.client()
    results = []
    for i in range(4):
        now[0] = start if i < 3 else start + 5  # a new window, but the app is still blocked
        results += await client.register_users([Profile(f"u{i}")])
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.RATE_LIMITED,
                                            Outcome.RATE_LIMITED]
    assert results[2].code == "416" and results[2].retry_after == 10.0
    assert box.over_limit["register"] == 2 and set(box.users) == {"u0", "u1"}
    [sent] = await client.send("u0", ["u1"], Message(text="a"))
    [limited] = await client.send("u0", ["u1"], Message(text="b"))
    assert sent.outcome is Outcome.OK
    assert limited.outcome is Outcome.RATE_LIMITED and limited.retry_after == 60.0
    assert [m["text"] for m in box.inbox("u1")] == ["a"]


async def test_an_internal_error_is_retryable():
    box = NeteaseSandbox(faults=Faults(error_rate=1.0))
    [result] = await box.client().register_users([Profile("ann")])
    assert result.outcome is Outcome.RETRYABLE and result.code == "500"
    assert box.faulted["register"] == 1 and not box.users


async def test_a_timeout_is_retryable_and_maybe_delivered():
    box = NeteaseSandbox(faults=Faults(timeout_rate=1.0, hang_seconds=5))
    results = await box.client(timeout=0.05).send("ann", ["bob", "cat"], Message(text="hi"))
    assert all(r.outcome is Outcome.RETRYABLE and r.maybe_delivered for r in results)
    assert results[0].code == "timeout"


def test_414_is_read_per_endpoint():
    def reply(code, desc=""):
        return Reply(200, {"code": code, "desc": desc}, httpx.Headers())

    client = NeteaseSandbox().client()

    def classify(op, reply):
        return client.classify(op.value, reply)

    assert classify(Operation.REGISTER, reply(414, "already register")).outcome is Outcome.EXISTS
    assert classify(Operation.ISSUE_TOKEN, reply(414, "already register")).outcome \
        is Outcome.REJECTED
    assert classify(Operation.SEND, reply(414, "checksum")).outcome is Outcome.AUTH
    assert classify(Operation.SEND, reply(414, "CurTime is expired")).outcome is Outcome.AUTH
    assert classify(Operation.SEND, reply(414, "toAccids is not a JSON array")).outcome \
        is Outcome.REJECTED
    assert classify(Operation.IMPORT_FRIENDS, reply(417)).outcome is Outcome.EXISTS
    assert classify(Operation.ADD_MEMBERS, reply(809)).outcome is Outcome.EXISTS
    assert classify(Operation.SEND, reply(417)).outcome is Outcome.REJECTED
    assert classify(Operation.SEND, Reply(502, {"code": 414}, httpx.Headers())).outcome \
        is Outcome.RETRYABLE
    assert classify(Operation.BROADCAST, reply(416)).retry_after is None
    assert classify(Operation.SEND, reply(503)).outcome is Outcome.RETRYABLE
    assert classify(Operation.SEND, Reply(502, {}, httpx.Headers())).outcome is Outcome.RETRYABLE
