"""The OpenIM sandbox's read endpoints over HTTP, called as the server's API
documents them: v3 with operationID and token headers, v2 with operationID
in the body."""

import uuid

import httpx
import pytest

from imshift.vendors.sandbox.openim import OpenIMSandbox

BASE = "http://sandbox.test"


async def call(box, path, body, token=None):
    headers = {"operationID": uuid.uuid4().hex}
    if token:
        headers["token"] = token
    if box.api_version == "v2":
        body = {"operationID": headers.pop("operationID"), **body}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post(BASE + path, headers=headers, json=body)
    return reply.status_code, reply.json()


async def admin_token(box):
    if box.api_version == "v3":
        _, reply = await call(box, "/auth/get_admin_token", {"secret": box.secret, "userID": box.admin_user_id})
    else:
        _, reply = await call(box, "/auth/user_token", {"secret": box.secret, "platform": 5,
                                                       "userID": box.admin_user_id})
    return reply["data"]["token"]


async def test_v3_group_member_list_and_friend_list():
    box = OpenIMSandbox()
    token = await admin_token(box)
    users = [{"userID": u, "nickname": u.title()} for u in ("ann", "bob", "cy")]
    assert (await call(box, "/user/user_register", {"users": users}, token))[1]["errCode"] == 0
    _, made = await call(box, "/group/create_group", {
        "ownerUserID": "ann", "memberUserIDs": ["bob", "cy"], "adminUserIDs": [],
        "groupInfo": {"groupID": "g1", "groupName": "G", "groupType": 2}}, token)
    assert made["errCode"] == 0
    _, reply = await call(box, "/group/get_group_member_list",
                          {"groupID": "g1", "pagination": {"pageNumber": 1, "showNumber": 2}}, token)
    assert reply["data"]["total"] == 3 and len(reply["data"]["members"]) == 2
    assert {m["roleLevel"] for m in reply["data"]["members"]} <= {100, 20}
    _, missing = await call(box, "/group/get_group_member_list",
                            {"groupID": "nope", "pagination": {"pageNumber": 1, "showNumber": 10}}, token)
    assert missing["errCode"] == 1004
    await call(box, "/friend/import_friend", {"ownerUserID": "ann", "friendUserIDs": ["bob"]}, token)
    _, friends = await call(box, "/friend/get_friend_list",
                            {"userID": "bob", "pagination": {"pageNumber": 1, "showNumber": 10}}, token)
    assert [f["friendUser"]["userID"] for f in friends["data"]["friendsInfo"]] == ["ann"]
    status, no_token = await call(box, "/friend/get_friend_list", {"userID": "bob"})
    assert status == 200 and no_token["errCode"] == 1001


async def test_v2_all_members_and_friend_list():
    box = OpenIMSandbox(api_version="v2")
    token = await admin_token(box)
    for uid in ("ann", "bob"):
        _, reply = await call(box, "/auth/user_register", {"secret": box.secret, "platform": 1,
                                                           "userID": uid, "nickname": uid})
        assert reply["errCode"] == 0
    _, made = await call(box, "/group/create_group", {"groupID": "g1", "ownerUserID": "ann",
                                                      "memberList": [{"userID": "bob"}]}, token)
    assert made["errCode"] == 0
    _, reply = await call(box, "/group/get_group_all_member_list", {"groupID": "g1"}, token)
    assert {m["userID"]: m["roleLevel"] for m in reply["data"]} == {"ann": 2, "bob": 1}
    await call(box, "/friend/import_friend", {"fromUserID": "ann", "friendUserIDList": ["bob"]}, token)
    _, friends = await call(box, "/friend/get_friend_list", {"fromUserID": "ann"}, token)
    assert [f["friendUser"]["userID"] for f in friends["data"]] == ["bob"]
    status, bad = await call(box, "/friend/get_friend_list", {}, token)
    assert status == 400 and "fromUserID" in bad["errMsg"]
    _, unknown = await call(box, "/group/get_group_all_member_list", {"groupID": "nope"}, token)
    assert unknown["errCode"] == 0 and unknown["data"] == []


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_the_constructor_builds_the_version_asked_for(version):
    box = OpenIMSandbox(api_version=version)
    assert isinstance(box, OpenIMSandbox) and box.api_version == version
    with pytest.raises(ValueError):
        OpenIMSandbox(api_version="v9")
