"""OpenIM v3 as a source of groups: /group/get_groups paged through the
client's list_group_pages, each group's members read whole, against the
OpenIM sandbox over in-process HTTP and over loopback; and the vendors that
cannot list groups say so before any call."""

import uuid

import httpx
import pytest

from imshift.vendors.http import http_client
from imshift.vendors.openim import OpenIMClient
from imshift.vendors.registry import VENDORS
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.serve import served
from imshift.vendors.vocabulary import Operation, Unsupported


def filled(groups: int, big: int = 0) -> OpenIMSandbox:
    """A v3 sandbox with users m_0000.. and groups g0.. (g0 the oldest), the
    last one `big` members strong when given."""
    box = OpenIMSandbox()
    people = max(big, 12)
    for i in range(people):
        box._add_user({"userID": f"m_{i:04d}", "nickname": f"M {i}"})
    for n in range(groups):
        size = big if big and n == groups - 1 else 2 + n
        box.add_group(f"g{n}", f"Grüppe {n}", f"m_{n:04d}",
                      [f"m_{(n + k) % people:04d}" for k in range(1, size)],
                      faceURL=f"https://a.example/g{n}.png", introduction=f"intro {n}")
    return box


async def listed(client, cursor=None, page_size=2):
    pages = []
    async for groups, after in client.list_group_pages(cursor, page_size=page_size):
        pages.append((groups, after))
    return pages


async def test_groups_are_listed_newest_first_with_owner_profile_and_every_member():
    box = filled(5, big=2500)  # g4 has 2500 members: three member pages of 1000
    client = box.client()
    pages = await listed(client)
    assert [after for _, after in pages] == ["2", "4", None]
    groups = [g for page, _ in pages for g in page]
    assert [g.group_id for g in groups] == ["g4", "g3", "g2", "g1", "g0"]  # the server sorts newest first
    g1 = groups[3]
    assert (g1.name, g1.owner, g1.avatar, g1.intro) == ("Grüppe 1", "m_0001", "https://a.example/g1.png",
                                                        "intro 1")
    assert list(g1.members) == ["m_0002", "m_0003"]  # the owner is not among the members
    assert len(groups[0].members) == 2499 and "m_0004" not in groups[0].members
    assert set(groups[0].members) | {"m_0004"} == {f"m_{i:04d}" for i in range(2500)}
    assert box.calls["list_groups"] == 3
    assert box.calls["get_members"] == 3 + 4  # g4's three pages, one each for the others
    await client.http.aclose()


async def test_a_listing_resumes_from_a_cursor_with_nothing_read_twice_or_lost():
    box = filled(7)
    client = box.client()
    first = await listed(client, page_size=3)
    cursor = first[0][1]
    rest = await listed(client, cursor, page_size=2)  # another page size: the cursor counts groups
    again = [g.group_id for page, _ in first[:1] for g in page] + [g.group_id for page, _ in rest for g in page]
    assert again == [f"g{n}" for n in range(6, -1, -1)]
    with pytest.raises(ValueError):
        await listed(client, "page-2")
    await client.http.aclose()


async def test_a_group_that_goes_away_before_its_members_are_read_is_left_out():
    box = filled(3)
    inner = box.app

    async def dismissed_after_the_page(scope, receive, send):
        await inner(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/group/get_groups":
            box.groups.pop("g1", None)  # as if dismissed between the page and its member read

    box.app = dismissed_after_the_page
    client = box.client()
    [(groups, after)] = await listed(client, page_size=10)
    assert [g.group_id for g in groups] == ["g2", "g0"] and after is None
    await client.http.aclose()


@pytest.mark.loopback
async def test_the_listing_works_over_loopback():
    box = filled(3)
    with served(box) as base_url:
        async with http_client() as http:
            client = OpenIMClient(box.config(base_url), http)
            [(groups, after)] = await listed(client, page_size=10)
    assert [g.group_id for g in groups] == ["g2", "g1", "g0"] and after is None


async def call(box, body, token):
    headers = {"operationID": uuid.uuid4().hex, **({"token": token} if token else {})}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post("http://sandbox.test/group/get_groups", headers=headers, json=body)
    assert reply.status_code == 200  # v3 answers every error as HTTP 200
    return reply.json()


async def token_for(box, path, body, admin=None):
    headers = {"operationID": uuid.uuid4().hex, **({"token": admin} if admin else {})}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post("http://sandbox.test" + path, headers=headers, json=body)
    return reply.json()["data"]["token"]


async def test_the_sandbox_refuses_what_get_groups_refuses_and_pages_as_the_server():
    box = filled(3)
    admin = await token_for(box, "/auth/get_admin_token", {"secret": box.secret, "userID": box.admin_user_id})
    page = {"pageNumber": 1, "showNumber": 2}
    assert (await call(box, {"pagination": page}, None))["errCode"] == 1001  # no token
    assert (await call(box, {"pagination": page}, "not-a-token"))["errCode"] == 1503
    assert (await call(box, {}, admin))["errCode"] == 1001  # GetGroupsReq.Check: pagination is empty
    assert (await call(box, {"pagination": {"pageNumber": 0, "showNumber": 2}}, admin))["errCode"] == 1001
    second = (await call(box, {"pagination": {"pageNumber": 2, "showNumber": 2}}, admin))["data"]
    assert second["total"] == 3 and [g["groupInfo"]["groupID"] for g in second["groups"]] == ["g0"]
    entry = second["groups"][0]
    assert (entry["groupOwnerUserID"], entry["groupOwnerUserName"]) == ("m_0000", "M 0")
    assert entry["groupInfo"]["memberCount"] == 2 and entry["groupInfo"]["faceURL"] == "https://a.example/g0.png"
    none = (await call(box, {"pagination": {"pageNumber": 1, "showNumber": 0}}, admin))["data"]
    assert none == {"total": 3, "groups": []}  # tools' FindPage: showNumber 0 reads nothing
    past = (await call(box, {"pagination": {"pageNumber": 9, "showNumber": 2}}, admin))["data"]
    assert past == {"total": 3, "groups": []}
    named = (await call(box, {"pagination": page, "groupName": "pe 2$"}, admin))["data"]
    assert [g["groupInfo"]["groupID"] for g in named["groups"]] == ["g2"] and named["total"] == 1
    one = (await call(box, {"pagination": page, "groupID": "g1"}, admin))["data"]
    assert [g["groupInfo"]["groupID"] for g in one["groups"]] == ["g1"]
    # The rpc checks no admin: a user's token may list too, as on the server.
    user = await token_for(box, "/auth/get_user_token", {"platformID": 5, "userID": "m_0001"}, admin)
    assert (await call(box, {"pagination": page}, user))["data"]["total"] == 3


async def test_groups_created_through_the_api_are_listed_with_their_face_and_intro():
    box = OpenIMSandbox()
    admin = await token_for(box, "/auth/get_admin_token", {"secret": box.secret, "userID": box.admin_user_id})
    for u in ("ann", "bob"):
        box._add_user({"userID": u, "nickname": u})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        made = await http.post("http://sandbox.test/group/create_group", json={
            "ownerUserID": "ann", "memberUserIDs": ["bob"], "adminUserIDs": [],
            "groupInfo": {"groupID": "gx", "groupName": "X", "groupType": 2, "faceURL": "f.png",
                          "introduction": "hi"}}, headers={"operationID": "o1", "token": admin})
    assert made.json()["errCode"] == 0
    [(groups, _)] = await listed(box.client(), page_size=10)
    assert [(g.group_id, g.owner, list(g.members), g.avatar, g.intro) for g in groups] == [
        ("gx", "ann", ["bob"], "f.png", "hi")]


@pytest.mark.parametrize("name", ["v2", *[v for v in VENDORS if v != "openim"]])
async def test_a_vendor_that_cannot_list_groups_says_so_before_any_call(name):
    box = OpenIMSandbox(api_version="v2") if name == "v2" else VENDORS[name].sandbox()
    client = box.client()
    assert not client.supports(Operation.LIST_GROUPS)
    with pytest.raises(Unsupported):
        await listed(client)
    assert box.calls.total() == 0
    await client.http.aclose()


def test_only_openim_v3_says_it_can_list_groups():
    assert OpenIMSandbox().client().supports(Operation.LIST_GROUPS)
    assert [v for v in VENDORS if VENDORS[v].client.for_config(VENDORS[v].sandbox().config())
            .supports(Operation.LIST_GROUPS)] == ["openim"]
