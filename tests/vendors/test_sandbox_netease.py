"""The NetEase sandbox over HTTP, signed by hand as the vendor documents
(AppKey, Nonce, CurTime, CheckSum = sha1(secret + nonce + curtime)), with
bodies as the vendor's own and public tools send them."""

import hashlib
import time
from urllib.parse import urlencode

import httpx

from imshift.vendors.sandbox.netease import NeteaseSandbox

BASE = "http://sandbox.test/nimserver/"


async def post(box, path, form):
    nonce, curtime = "f" * 128, str(int(time.time()))
    headers = {"AppKey": box.app_key, "Nonce": nonce, "CurTime": curtime,
               "CheckSum": hashlib.sha1(f"{box.app_secret}{nonce}{curtime}".encode()).hexdigest(),
               "Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post(BASE + path, headers=headers, content=urlencode(form))
    assert reply.status_code == 200  # every business reply is HTTP 200
    return reply.json()


async def accounts(box, *ids):
    for accid in ids:
        assert (await post(box, "user/create.action", {"accid": accid, "name": accid}))["code"] == 200


async def test_single_quoted_json_bodies_are_accepted_as_the_server_parses_them():
    box = NeteaseSandbox()
    await accounts(box, "ann", "bob")
    # what str({'msg': ...}) gives a Python tool
    reply = await post(box, "msg/sendMsg.action", {"from": "ann", "ope": "0", "to": "bob", "type": "0",
                                                   "body": str({"msg": "it's \"quoted\""})})
    assert reply["code"] == 200 and "msgid" in reply["data"]
    assert box.inbox("bob")[-1]["text"] == "it's \"quoted\""
    reply = await post(box, "msg/sendBatchMsg.action", {"fromAccid": "ann", "toAccids": str(["bob"]),
                                                        "type": "0", "body": "{'msg': 'hi'}"})
    assert reply["code"] == 200 and box.inbox("bob")[-1]["text"] == "hi"
    reply = await post(box, "user/getUinfos.action", {"accids": "['ann']"})
    assert [u["accid"] for u in reply["uinfos"]] == ["ann"]


async def test_what_is_not_json_at_all_is_still_refused():
    box = NeteaseSandbox()
    await accounts(box, "ann", "bob")
    for body in ("hello", "{'msg': 'unterminated}", "{'msg': True}"):
        reply = await post(box, "msg/sendMsg.action", {"from": "ann", "ope": "0", "to": "bob",
                                                       "type": "0", "body": body})
        assert reply["code"] == 414 and "body" in reply["desc"], body
    assert box.inbox("bob") == []


async def test_team_query_and_joined_teams_read_back_membership():
    box = NeteaseSandbox()
    await accounts(box, "own", "m1", "m2")
    created = await post(box, "team/create.action", {"tname": "T", "owner": "own", "members": '["m1","m2"]',
                                                     "msg": "join", "magree": "0", "joinmode": "0"})
    tid = created["tid"]
    reply = await post(box, "team/query.action", {"tids": f"[{tid}]", "ope": "1"})
    [info] = reply["tinfos"]
    assert info["tid"] == int(tid) and info["owner"] == "own" and sorted(info["members"]) == ["m1", "m2"]
    assert "members" not in (await post(box, "team/query.action", {"tids": f'["{tid}"]', "ope": "0"}))["tinfos"][0]
    joined = await post(box, "team/joinTeams.action", {"accid": "m1"})
    assert joined["count"] == 1 and joined["infos"][0]["tname"] == "T"
    assert (await post(box, "team/query.action", {"tids": "not json", "ope": "1"}))["code"] == 414


async def test_friend_get_reads_back_since_a_time():
    box = NeteaseSandbox()
    await accounts(box, "ann", "bob")
    assert (await post(box, "friend/add.action", {"accid": "ann", "faccid": "bob", "type": "1"}))["code"] == 200
    reply = await post(box, "friend/get.action", {"accid": "ann", "updatetime": "0"})
    assert reply["size"] == 1 and reply["friends"][0]["faccid"] == "bob"
    later = str(int(time.time() * 1000) + 60_000)
    assert (await post(box, "friend/get.action", {"accid": "ann", "updatetime": later}))["friends"] == []
    assert (await post(box, "friend/get.action", {"accid": "bob", "createtime": "0"}))["size"] == 1


async def test_friend_get_needs_updatetime_or_createtime():
    box = NeteaseSandbox()
    await accounts(box, "ann")
    reply = await post(box, "friend/get.action", {"accid": "ann"})
    assert reply["code"] == 414 and "updatetime" in reply["desc"]
    assert (await post(box, "friend/get.action", {"accid": "ann", "updatetime": "soon"}))["code"] == 414
    assert (await post(box, "friend/get.action", {"accid": "nobody", "updatetime": "0"}))["code"] == 414
