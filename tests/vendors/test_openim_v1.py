"""OpenIM's early API (open-im-server v1.0.x, the project's reference
document) as `api_version = "v1"`: the issue's reproduction, what goes on the
wire, its codes mapped to outcomes, a sandbox that refuses v2's and v3's
forms, and a migration run into a v1 sandbox served over real HTTP."""

import dataclasses
import json
import time

import httpx
import pytest
from cryptography.fernet import Fernet

from imshift.context import Context
from imshift.jobs import run_control, runs
from imshift.jobs.progress import progress, results
from imshift.settings import AppSettings, Settings
from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile
from imshift.vendors.openim import OpenIMClient, OpenIMConfig
from imshift.vendors.openim_v1 import RULES_V1, OpenIMV1Client
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.serve import served
from imshift.workers.embedded import in_process_workers

from test_openim_versions import Recorder

BASE = "http://sandbox.test"


def v1_box(**kwargs):
    return OpenIMSandbox(api_version="v1", **kwargs)


def recorded(box, override=None, api_version="v1"):
    recorder = Recorder(box, override)
    config = dataclasses.replace(box.config(BASE), api_version=api_version)
    return OpenIMClient(config, httpx.AsyncClient(transport=recorder)), recorder


async def raw(box, path, body, token=None):
    headers = {"token": token} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)) as http:
        reply = await http.post(BASE + path, headers=headers, json=body)
    return reply.status_code, reply.json() if reply.status_code != 404 else None


# -- the issue's reproduction ----------------------------------------------------------------

async def test_the_v2_setting_fails_every_register_on_an_early_server_and_v1_works():
    box = v1_box()
    profiles = [Profile(f"u_{i}", f"User {i}") for i in range(3)]
    v2, _ = recorded(box, api_version="v2")
    assert type(v2).__name__ == "OpenIMV2Client"
    for result in await v2.register_users(profiles) + await v2.issue_tokens(["u_0"]):
        assert result.outcome is Outcome.REJECTED and result.code == "400"
        assert "'uid'" in result.message and "'required'" in result.message
    assert not [u for u in box.users if u.startswith("u_")]

    v1, _ = recorded(box)
    assert isinstance(v1, OpenIMV1Client) and v1.rules is RULES_V1
    assert [r.outcome for r in await v1.register_users(profiles)] == [Outcome.OK] * 3
    assert await v1.get_profiles([p.user_id for p in profiles]) == profiles
    [token] = await v1.issue_tokens(["u_0"])
    assert box.token_owner(token.data["token"]) == ("u_0", 5)


def test_the_setting_and_its_rules():
    config = OpenIMConfig(secret="tuoyun", api_version="v1", admin_user_id="openIM123456")
    assert OpenIMClient.for_config(config) is OpenIMV1Client
    assert OpenIMClient.rules_for(config) is RULES_V1
    with pytest.raises(ValueError, match="platform_id"):
        OpenIMConfig(secret="s", api_version="v1", platform_id=8)  # register takes 1..7
    assert RULES_V1.check_profile(Profile("a.b-c", "")) == ["name: required"]  # name is required in v1
    assert RULES_V1.check_profile(Profile("x", "X", extra={"mobile": "1" * 33}))[0].startswith("mobile")
    assert not OpenIMV1Client.supports(Operation.BROADCAST) and not OpenIMV1Client.supports(Operation.LIST_GROUPS)
    assert not OpenIMV1Client.repeat_safe(Operation.CREATE_GROUP)  # the server picks the group id
    assert OpenIMV1Client.feeds is False


# -- on the wire -----------------------------------------------------------------------------

async def test_every_call_speaks_the_early_api():
    box = v1_box()
    client, recorder = recorded(box)
    profiles = [Profile("ann", "Ann", "https://a/1.png", {"gender": "2", "birth": "1990-01-02"}),
                Profile("bob", "Bob"), Profile("cy", "Cy")]
    await client.register_users(profiles)
    await client.import_friends("ann", ["bob"])
    [made] = [await client.create_group(Group("src_g", "G", "ann", ["bob"]))]
    await client.add_members(made.data["group_id"], "ann", ["cy"])
    await client.send("ann", ["bob"], Message(text="hi"))
    await client.send_group("ann", [made.data["group_id"]], Message(custom={"k": 1}))
    await client.update_profiles([Profile("bob", "Bobby")])
    assert [u async for u in client.list_users()] == ["ann", "bob", "cy"]
    bodies = {}
    for path, headers, body in recorder.seen:
        bodies.setdefault(path, body)
        assert body["operationID"] and "operationid" not in {k.lower() for k in headers}
        assert ("token" in headers) == (not path.startswith("/auth/"))
    assert bodies["/auth/user_register"] == {
        "secret": "tuoyun", "platform": 5, "uid": "ann", "name": "Ann", "icon": "https://a/1.png",
        "gender": 2, "birth": "1990-01-02", "operationID": bodies["/auth/user_register"]["operationID"]}
    assert bodies["/auth/user_token"]["uid"] == "openIM123456"  # the admin token, for the configured admin
    assert {k: v for k, v in bodies["/friend/import_friend"].items() if k != "operationID"} == {
        "ownerUid": "ann", "uidList": ["bob"]}
    create = bodies["/group/create_group"]
    assert create["memberList"] == [{"uid": "ann", "setRole": 1}, {"uid": "bob", "setRole": 0}]
    assert "groupID" not in create and made.data["group_id"] != "src_g"
    assert bodies["/group/invite_user_to_group"]["uidList"] == ["cy"]
    sends = [b for p, _, b in recorder.seen if p == "/manager/send_msg"]
    assert [(s["sessionType"], s["recvID"], s["content"]) for s in sends] == [
        (1, "bob", {"text": "hi"}), (2, made.data["group_id"], {"data": '{"k":1}', "description": "",
                                                                   "extension": ""})]
    assert bodies["/user/update_user_info"]["uid"] == "bob" and "/manager/get_all_users_uid" in bodies
    assert box.group_members(made.data["group_id"]) == {"ann", "bob", "cy"}
    assert [m.get("text") or m["custom"] for m in box.inbox("bob")] == ["hi", {"k": 1}]
    assert box.friends("bob") == {"ann"}
    assert box.stored_profile("ann").extra == {"gender": "2", "birth": "1990-01-02"}


async def test_reads_back_friends_with_the_users_token_and_finds_a_cut_off_group():
    box = v1_box()
    client = box.client()
    await client.register_users([Profile(u, u.title()) for u in ("ann", "bob", "cy")])
    await client.import_friends("ann", ["bob", "cy"])
    assert sorted(await client.get_friends("ann")) == ["bob", "cy"] and await client.get_friends("bob") == ["ann"]
    made = await client.create_group(Group("g", "Team", "ann", ["bob", "nobody"]))
    assert made.outcome is Outcome.OK and made.data["members_not_added"] == ["nobody"]
    assert await client.find_groups("ann", "Team") == [made.data["group_id"]]
    assert await client.find_groups("bob", "Team") == []  # bob is no owner
    assert await client.get_members("no-such-group", "ann") is None


# -- codes and outcomes ----------------------------------------------------------------------

def answer(body, status=200):
    async def reply(request, inner):
        return httpx.Response(status, json=body)
    return reply


async def test_an_existing_user_is_exists_whether_500_as_v1_0_7_or_1102_as_the_reference():
    box = v1_box()
    client = box.client()
    await client.register_users([Profile("ann", "Ann")])
    [again] = await client.register_users([Profile("ann", "Ann")])
    assert again.outcome is Outcome.EXISTS and again.code == "500"
    documented, _ = recorded(box, {"/auth/user_register": answer({"errCode": 1102, "errMsg": "registered"})})
    [result] = await documented.register_users([Profile("bob", "Bob")])
    assert result.outcome is Outcome.EXISTS and result.code == "1102"
    [missing] = await client.issue_tokens(["nobody"])
    assert missing.outcome is Outcome.REJECTED and "not registered" in missing.message


@pytest.mark.parametrize("code", [1501, 1507, 200, 703])
async def test_a_refused_admin_token_is_fetched_again_once_then_auth(code):
    box = v1_box()
    client, recorder = recorded(box, {"/manager/get_all_users_uid": answer(
        {"errCode": code, "errMsg": "Parse token failed", "uidList": None})})
    with pytest.raises(Exception) as failed:
        [u async for u in client.list_users()]
    assert failed.value.result.outcome is Outcome.AUTH and failed.value.result.code == str(code)
    assert [p for p, _, _ in recorder.seen].count("/auth/user_token") == 2


async def test_a_token_the_server_dropped_is_replaced_inside_the_call():
    box = v1_box()
    client = box.client()
    await client.register_users([Profile("ann", "Ann"), Profile("bob", "Bob")])
    await client.import_friends("ann", ["bob"])
    for token in box.tokens.values():
        token.expires_at = 0  # v1.0.7: errCode 200 "Parse token failed"; send_msg: HTTP 400
    assert [r.outcome for r in await client.send("ann", ["bob"], Message(text="x"))] == [Outcome.OK]
    assert box.calls["auth"] == 2


async def test_a_wrong_secret_and_a_non_admin_uid_are_auth():
    box = v1_box()
    [wrong] = await box.client(wrong_secret=True).register_users([Profile("ann", "Ann")])
    assert wrong.outcome is Outcome.AUTH and wrong.code == "401"
    await box.client().register_users([Profile("ann", "Ann"), Profile("bob", "Bob")])
    config = dataclasses.replace(box.config(BASE), admin_user_id="ann")  # a user, not an app manager
    client = OpenIMClient(config, httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app)))
    [sent] = await client.send("ann", ["bob"], Message(text="x"))
    [friend] = await client.import_friends("ann", ["bob"])
    assert sent.outcome is Outcome.AUTH and friend.outcome is Outcome.AUTH
    assert box.inbox("bob") == [] and box.friends("bob") == set()


# -- the sandbox refuses the other versions' forms -----------------------------------------

async def test_the_sandbox_refuses_v2_and_v3_forms():
    box = v1_box()
    v2_register = {"secret": box.secret, "platform": 5, "userID": "ann", "nickname": "Ann",
                   "faceURL": "", "operationID": "op1"}
    status, body = await raw(box, "/auth/user_register", v2_register)
    assert status == 400 and body["errCode"] == 400 and "'uid'" in body["errMsg"]
    status, body = await raw(box, "/auth/user_token", {"secret": box.secret, "platform": 5,
                                                       "userID": box.admin_user_id})
    assert status == 400 and "'uid'" in body["errMsg"]
    for v3_path in ("/auth/get_admin_token", "/user/user_register", "/msg/send_msg",
                    "/msg/batch_send_msg", "/user/get_users_info", "/user/get_all_users_uid"):
        assert (await raw(box, v3_path, {}))[0] == 404, v3_path
    status, body = await raw(box, "/auth/user_token", {"secret": "nope", "platform": 5, "uid": "x"})
    assert status == 400 and body["errCode"] == 401
    status, body = await raw(box, "/auth/user_token", {"secret": box.secret, "platform": 5,
                                                       "uid": box.admin_user_id})
    token = body["data"]["token"]
    status, body = await raw(box, "/manager/get_all_users_uid", {}, token)  # operationID as a v3 header
    assert status == 400 and "'operationID'" in body["errMsg"]
    status, body = await raw(box, "/manager/get_all_users_uid", {"operationID": "o"}, token)
    assert body == {"errCode": 0, "errMsg": "", "uidList": [box.admin_user_id]}
    status, body = await raw(box, "/friend/import_friend", {"operationID": "o", "ownerUserID": "a",
                                                            "friendUserIDs": ["b"]}, token)
    assert status == 400 and body["errCode"] == 400
    assert box.users.keys() == {box.admin_user_id}


# -- a migration run into an OpenIM v1 deployment over HTTP ------------------------------------

FAST = {op: 500.0 for op in ("register", "update_profile", "get_profiles", "issue_token", "create_group",
                             "add_members", "import_friends", "get_members", "get_friends")}


def test_a_migration_run_into_an_openim_v1_sandbox_over_http(tmp_path):
    box = v1_box()
    users = [f"user_{i:03d}" for i in range(30)]
    (tmp_path / "u.csv").write_text("user_id,name,avatar\n" + "".join(
        f"{u},Näme {u},https://cdn.example.com/{u}.png\n" for u in users), encoding="utf-8")
    pairs = [(users[i], users[(i * 7 + 3) % 30]) for i in range(30) if (i * 7 + 3) % 30 != i]
    (tmp_path / "f.csv").write_text("user_id,friend_id\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    groups = [{"group_id": f"grp_{n}", "name": f"Grüppe {n}", "owner": users[n],
               "members": [users[(n + k) % 30] for k in range(1, 3 + n * 4)]} for n in range(4)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in groups))
    with served(box) as url:
        ctx = Context(Settings(
            database_url=f"sqlite:///{tmp_path / 'imshift.db'}", token_key=Fernet.generate_key().decode(),
            apps={"old": AppSettings(vendor="maxim", sandbox=True),
                  "new": AppSettings(vendor="openim", api_version="v1", base_url=url, secret=box.secret,
                                     admin_user_id=box.admin_user_id, rates=FAST)}))
        plan = runs.plan_run(ctx.engine, "old", ctx.target("new"), runs.RunRequest(
            users=tmp_path / "u.csv", friends=tmp_path / "f.csv", groups=tmp_path / "g.jsonl",
            tokens=True, verify=True), chunk_size=20)
        ctx.runtime  # noqa: B018  (configures the workers)
        with in_process_workers(ctx.broker):
            run_control.start(ctx.engine, ctx.broker, plan.run_id)
            for _, stage in run_control.run_progress(ctx.engine, plan.run_id).stages:
                deadline = time.monotonic() + 120
                while progress(ctx.engine, stage.job_id).status != "finished":
                    assert time.monotonic() < deadline, progress(ctx.engine, stage.job_id)
                    time.sleep(0.1)
        p = run_control.run_progress(ctx.engine, plan.run_id)
    counts = {stage: sp.counts for stage, sp in p.stages}
    assert counts["accounts"] == {"ok": 30} and counts["groups"] == {"ok": 4}
    friends = results(ctx.engine, dict(p.stages)["friends"].job_id, "rejected")
    assert all(i.message.startswith("duplicate of row") for i in friends)  # a pair given both ways
    assert counts["tokens"] == {"ok": 30}
    assert set(counts["verify"]) == {"ok"}, [
        (i.key, i.message) for i in results(ctx.engine, dict(p.stages)["verify"].job_id, "rejected")][:3]
    assert box.stored_profile(users[1]) == Profile(users[1], f"Näme {users[1]}",
                                                   f"https://cdn.example.com/{users[1]}.png")
    mapped = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, plan.run_id)}
    for g in groups:  # the server named each group: the id map says which
        assert mapped[("group", g["group_id"])] != g["group_id"]
        assert box.group_members(mapped[("group", g["group_id"])]) == {g["owner"], *g["members"]}
    for a, b in pairs:
        assert b in box.friends(a) and a in box.friends(b)
    assert box.calls["create_group"] == 4  # each group made once
    ctx.engine.dispose()
