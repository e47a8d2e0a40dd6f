"""The RongCloud sandbox over HTTP, called as the vendor's own server SDK
calls it: RC- headers in lower case, str(random.random()) nonces (19+
characters), seconds-times-1000 timestamps, repeated form fields."""

import hashlib
import random
import time
from urllib.parse import urlencode

import httpx

from imshift.vendors.sandbox.rongcloud import RongCloudSandbox

BASE = "http://sandbox.test"


def signed(box, *, plain=False):
    nonce = (str(random.random()) + "1234")[:20]  # 19+ characters, as the SDK sends them at times
    assert len(nonce) >= 19
    timestamp = str(int(time.time()) * 1000)
    signature = hashlib.sha1(f"{box.app_secret}{nonce}{timestamp}".encode()).hexdigest()
    prefix = "" if plain else "rc-"
    names = ("App-Key", "Nonce", "Timestamp", "Signature") if plain else (
        "app-key", "nonce", "timestamp", "signature")
    values = (box.app_key, nonce, timestamp, signature)
    headers = {prefix + n: v for n, v in zip(names, values, strict=True)}
    headers["content-type"] = "application/x-www-form-urlencoded"
    return headers


async def post(box, path, fields, **kwargs):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post(BASE + path, headers=signed(box, **kwargs),
                                content=urlencode(fields, doseq=True))
    return reply.status_code, reply.json()


async def users(box, *ids):
    for user_id in ids:
        assert (await post(box, "/user/getToken.json", {"userId": user_id, "name": user_id}))[0] == 200


async def test_both_header_spellings_and_long_nonces_are_accepted():
    box = RongCloudSandbox()
    assert await post(box, "/user/getToken.json", {"userId": "a", "name": "A"}) == (
        200, {"code": 200, "userId": "a", "token": box.tokens["a"][-1]})
    status, body = await post(box, "/user/getToken.json", {"userId": "b", "name": "B"}, plain=True)
    assert status == 200 and body["code"] == 200


async def test_group_lifecycle_and_member_query():
    box = RongCloudSandbox()
    await users(box, "ann", "bob", "cy")
    assert (await post(box, "/group/create.json", {"userId": ["ann", "bob"], "groupId": "g1",
                                                    "groupName": "G"}))[1] == {"code": 200}
    assert await post(box, "/group/user/query.json", {"groupId": "g1"}) == (
        200, {"code": 200, "id": "g1", "users": [{"id": "ann"}, {"id": "bob"}]})
    # sync: group[<id>]=<name> pairs for one user
    await post(box, "/group/sync.json", {"userId": "cy", "group[g1]": "G", "group[g2]": "Two"})
    assert box.group_members("g1") == {"ann", "bob", "cy"} and box.group_members("g2") == {"cy"}
    await post(box, "/group/refresh.json", {"groupId": "g1", "groupName": "Renamed"})
    assert box.groups["g1"]["name"] == "Renamed"
    await post(box, "/group/quit.json", {"userId": ["bob", "cy"], "groupId": "g1"})
    assert box.group_members("g1") == {"ann"}
    await post(box, "/group/quit.json", {"userId": "cy", "groupId": "g2"})
    assert box.group_members("g2") is None  # nobody left: dismissed
    assert (await post(box, "/group/dismiss.json", {"userId": "ann", "groupId": "g1"}))[1] == {"code": 200}
    assert (await post(box, "/group/user/query.json", {"groupId": "g1"}))[1]["users"] == []


async def test_group_fields_follow_the_vendor_rules():
    box = RongCloudSandbox()
    status, body = await post(box, "/group/refresh.json", {"groupId": "g1"})
    assert (status, body["code"]) == (400, 1002) and "groupName" in body["errorMessage"]
    status, body = await post(box, "/group/sync.json", {"userId": "a", "group[bad id]": "x"})
    assert (status, body["code"]) == (400, 1002)
    status, body = await post(box, "/group/quit.json", {"groupId": "g1"})
    assert (status, body["code"]) == (400, 1002) and "userId" in body["errorMessage"]


async def test_check_online_block_and_unblock():
    box = RongCloudSandbox()
    await users(box, "ann", "bob")
    assert await post(box, "/user/checkOnline.json", {"userId": "ann"}) == (200, {"code": 200, "status": "0"})
    box.online.add("ann")
    assert (await post(box, "/user/checkOnline.json", {"userId": "ann"}))[1]["status"] == "1"
    assert (await post(box, "/user/block.json", {"userId": ["ann", "bob"], "minute": "10"}))[1] == {"code": 200}
    blocked = (await post(box, "/user/block/query.json", {"page": "1"}))[1]["users"]
    assert sorted(u["userId"] for u in blocked) == ["ann", "bob"]
    await post(box, "/user/unblock.json", {"userId": "bob"})
    assert [u["userId"] for u in (await post(box, "/user/block/query.json", {"page": "1"}))[1]["users"]] == ["ann"]
    status, body = await post(box, "/user/block.json", {"userId": "ann", "minute": "0"})
    assert (status, body["code"]) == (400, 1002) and "minute" in body["errorMessage"]
    status, body = await post(box, "/user/block.json", {"userId": "ann"})
    assert (status, body["code"]) == (400, 1002)


async def test_system_publish_delivers_and_counts_each_recipient():
    box = RongCloudSandbox()
    await users(box, "sys", "ann", "bob")
    status, body = await post(box, "/message/system/publish.json", {
        "fromUserId": "sys", "toUserId": ["ann", "bob"], "objectName": "RC:TxtMsg",
        "content": '{"content":"hello"}', "pushContent": "hello"})
    assert status == 200 and [u["userId"] for u in body["messageUIDs"]] == ["ann", "bob"]
    assert box.inbox("ann")[0]["text"] == "hello" and box.inbox("ann")[0]["system"] is True
    assert box.accepted["send"] == 1 and box.max_per_second("send") == 0  # no limit set
    status, body = await post(box, "/message/system/publish.json", {
        "fromUserId": "sys", "toUserId": [f"u{i}" for i in range(101)], "objectName": "RC:TxtMsg",
        "content": '{"content":"x"}'})
    assert (status, body["code"]) == (400, 1002) and "at most 100" in body["errorMessage"]


async def test_an_empty_post_is_1003_and_a_bad_signature_1004():
    box = RongCloudSandbox()
    assert await post(box, "/group/dismiss.json", {}) == (400, {"code": 1003, "errorMessage": "No POST data."})
    box.app_secret = "changed"
    signature_for_old = RongCloudSandbox()
    status, body = await post(signature_for_old, "/user/checkOnline.json", {"userId": "a"})
    assert status == 200
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post(BASE + "/user/checkOnline.json", headers=signed(signature_for_old),
                                content="userId=a")
    assert reply.status_code == 401 and reply.json()["code"] == 1004


async def test_friend_get_pages_with_a_token_and_refuses_what_the_vendor_refuses():
    box = RongCloudSandbox()
    await users(box, "ann", *(f"f{i}" for i in range(5)))
    for i in range(5):
        assert (await post(box, "/friend/add.json", {"userId": "ann", "targetId": f"f{i}",
                                                      "optType": "2"}))[1]["code"] == 200
    status, first = await post(box, "/friend/get.json", {"userId": "ann", "size": "3"})
    assert status == 200 and first["totalCount"] == 5 and len(first["friendList"]) == 3
    _, rest = await post(box, "/friend/get.json", {"userId": "ann", "size": "3",
                                                   "pageToken": first["pageToken"]})
    assert rest["pageToken"] == "" and len(rest["friendList"]) == 2
    ids = [f["userId"] for f in first["friendList"] + rest["friendList"]]
    assert ids == [f"f{i}" for i in range(5)]  # oldest first
    _, newest = await post(box, "/friend/get.json", {"userId": "ann", "order": "1"})
    assert [f["userId"] for f in newest["friendList"]] == ids[::-1]
    for bad in ({"size": "0"}, {"size": "101"}, {"order": "2"}, {"pageToken": "nope"}, {"userId": ""}):
        status, body = await post(box, "/friend/get.json", {"userId": "ann", **bad})
        assert (status, body["code"]) == (400, 1002), bad
    box.profile_hosting = False
    status, body = await post(box, "/friend/get.json", {"userId": "ann"})
    assert (status, body["code"]) == (430, 1009)
