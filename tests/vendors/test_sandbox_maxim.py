"""The Maxim sandbox's read endpoints over HTTP, with the headers the vendor
documents (app_id, access-token, user_id to act as a user)."""

import httpx

from imshift.vendors.sandbox.maxim import MaximSandbox

BASE = "http://sandbox.test"


def headers(box, **extra):
    return {"app_id": box.app_id, "access-token": box.access_token, **extra}


async def test_member_list_and_roster_list():
    box = MaximSandbox()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app), base_url=BASE) as http:
        made = (await http.post("/user/register/batch", headers=headers(box), json={
            "list": [{"username": n, "password": "pw"} for n in ("ann", "bob", "cy")]})).json()["data"]
        ann, bob, cy = (m["user_id"] for m in made)
        group = (await http.post("/group/create", headers=headers(box, user_id=str(ann)),
                                 json={"name": "G", "user_list": [bob]})).json()["data"]["group_id"]
        members = (await http.get("/group/member_list", params={"group_id": group, "limit": 10},
                                  headers=headers(box))).json()
        assert members["code"] == 200 and {m["user_id"] for m in members["data"]} == {ann, bob}
        page = (await http.get("/group/member_list", params={"group_id": group, "cursor": 1, "limit": 1},
                               headers=headers(box))).json()["data"]
        assert len(page) == 1
        missing = (await http.get("/group/member_list", params={"group_id": 1},
                                  headers=headers(box))).json()
        assert missing["code"] == 20001
        await http.post("/user/add_roster", headers=headers(box, user_id=str(ann)), json={"list": [cy]})
        roster = (await http.get("/roster/list", headers=headers(box, user_id=str(cy)))).json()
        assert roster["data"] == [ann]
        no_user = (await http.get("/roster/list", headers=headers(box))).json()
        assert no_user["code"] == 10002
        bad_json = await http.post("/group/invite", headers=headers(box, user_id=str(ann)), content=b"{nope")
        assert bad_json.status_code == 200 and bad_json.json()["code"] == 10002


async def test_user_rosters_and_paged_reads_refuse_bad_windows():
    box = MaximSandbox()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app), base_url=BASE) as http:
        made = (await http.post("/user/register/batch", headers=headers(box), json={
            "list": [{"username": n, "password": "pw"} for n in ("ann", "bob", "cy")]})).json()["data"]
        ann, bob, cy = (m["user_id"] for m in made)
        await http.post("/user/add_roster", headers=headers(box, user_id=str(ann)), json={"list": [bob, cy]})
        rosters = (await http.get("/user/rosters", headers=headers(box, user_id=str(ann)))).json()
        assert rosters["code"] == 200 and rosters["data"] == [bob, cy]
        page = (await http.get("/roster/list", params={"cursor": 1, "limit": 1},
                               headers=headers(box, user_id=str(ann)))).json()
        assert page["data"] == [cy]
        for bad in ({"cursor": -1}, {"limit": 0}, {"limit": "many"}):
            reply = (await http.get("/roster/list", params=bad, headers=headers(box, user_id=str(ann)))).json()
            assert reply["code"] == 10002, bad
        assert (await http.get("/user/rosters", headers=headers(box))).json()["code"] == 10002
