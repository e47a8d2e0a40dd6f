"""Bridges over the HTTP API on SQLite and PostgreSQL: a migration run
between two NetEase sandboxes carried out by real in-process workers, a
bridge over it, and signed message copies POSTed to `/hooks/old` as the
vendor signs them, relayed by the workers. The routes' answers match the
bridge's report; pause, resume and remove answer with the new status or a
409 with the CLI's reason; the API token guards every route but the hooks,
which refuse forged deliveries and unknown apps and count them; `/metrics`
shows the bridge's messages and lag and the feed's deliveries."""

import itertools
import json
import time

from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from imshift.api import create_app
from imshift.jobs import bridges, run_control, runs
from imshift.vendors.netease_feed import body_md5, copy_checksum
from imshift.workers.embedded import in_process_workers

from api_support import AUTH, TOKEN, api, context, wait_until_done, write_users  # noqa: F401  (pytest fixtures, used by name)

APPS = {"old": {"vendor": "netease", "sandbox": True}, "new": {"vendor": "netease", "sandbox": True}}
NO_TOKEN = {"Authorization": ""}


def migrated(ctx, tmp_path, users=5):
    """A run old -> new of `users` accounts, carried out; its id."""
    request = runs.RunRequest(users=write_users(tmp_path / "u.csv", users))
    run_id = runs.plan_run(ctx.engine, "old", ctx.target("new"), request, chunk_size=10).run_id
    run_control.start(ctx.engine, ctx.broker, run_id)
    for _, p in run_control.run_progress(ctx.engine, run_id).stages:
        assert wait_until_done(ctx, p.job_id, 30).status == "finished"
    return run_id


def copy(ctx, app, event, checksum=None):
    """A NetEase message copy of `event`, signed with `app`'s secret (or the
    CheckSum given): its body and headers."""
    config = ctx.config(app)
    body = json.dumps(event).encode()
    curtime, md5 = str(int(time.time() * 1000)), body_md5(body)
    return body, {**NO_TOKEN, "Content-Type": "application/json", "AppKey": config.app_key,
                  "CurTime": curtime, "MD5": md5,
                  "CheckSum": checksum or copy_checksum(config.app_secret, md5, curtime)}


def text(msg_id, sender, to):
    return {"eventType": "1", "convType": "PERSON", "fromAccount": sender, "to": to,
            "msgidServer": msg_id, "msgTimestamp": str(int(time.time() * 1000)), "msgType": "TEXT",
            "body": f"hello {msg_id}"}


def sample(http, name, **labels):
    """The value of one sample on /metrics (0 when absent)."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0


def test_bridge_routes_hooks_and_metrics(database_url, tmp_path, api):
    ctx = context(database_url, apps=APPS)
    ctx.runtime  # noqa: B018  (configures the workers)
    http = api(ctx)
    with in_process_workers(ctx.broker):
        run_id = migrated(ctx, tmp_path)
        assert http.get("/api/bridges").json() == []
        bid = bridges.add(ctx.engine, source_app="old", app="new", run_id=run_id, both_ways=False,
                          hold=600, settle=0.05)
        deliveries = {(app, answer): sample(http, "imshift_feed_deliveries_total", app=app, answer=answer)
                      for app, answer in (("old", "stored"), ("old", "ignored"), ("old", "refused 401"),
                                          ("?", "refused 404"), ("new", "refused 404"))}

        def hook(app, body_headers):
            body, headers = body_headers
            return http.post(f"/hooks/{app}", content=body, headers=headers)

        first = copy(ctx, "old", text("9001", "user_000001", "user_000002"))
        for delivery in (first, copy(ctx, "old", text("9002", "user_000003", "user_000001")), first):
            r = hook("old", delivery)  # no API token: the CheckSum is the check
            assert r.status_code == 200 and r.json()["code"] == 200, r.text
        assert hook("old", copy(ctx, "old", {"eventType": "2", "accid": "user_000001"})).status_code == 200
        forged = hook("old", copy(ctx, "old", text("9003", "user_000001", "user_000002"), checksum="0" * 40))
        assert forged.status_code == 401 and forged.json() == {"error": "CheckSum does not match"}
        stranger = hook("nosuch", copy(ctx, "old", text("9004", "user_000001", "user_000002")))
        assert stranger.status_code == 404 and "no app named 'nosuch'" in stranger.json()["error"]
        unbridged = hook("new", copy(ctx, "new", text("9005", "user_000001", "user_000002")))
        assert unbridged.status_code == 404 and "no bridge takes new's feed" in unbridged.json()["error"]
        deadline = time.monotonic() + 30
        while bridges.report(ctx.engine, bid)["directions"][0]["relayed"] < 2:
            assert time.monotonic() < deadline, bridges.report(ctx.engine, bid)
            time.sleep(0.05)

    listed = http.get("/api/bridges").json()
    one = http.get(f"/api/bridges/{bid}").json()
    assert listed == [one]
    [way] = one.pop("directions")
    assert one == {**one, "id": bid, "name": f"B{bid}", "source_app": "old", "app": "new",
                   "run": f"R{run_id}", "both_ways": False, "hold_seconds": 600.0, "settle_seconds": 0.05,
                   "status": "active", "stop_reason": None, "last_failures": []}
    assert way == {**way, "from_app": "old", "to_app": "new", "relayed": 2, "pending": 0, "held": 0,
                   "failed": 0, "rejected": 0, "unknown": 0, "duplicates": 1, "echoes": 0, "refused": 1,
                   "ignored": 1}
    assert 0 <= way["lag_p50"] <= way["lag_p99"] < 30
    assert bridges.report(ctx.engine, bid)["directions"][0]["lag_p99"] == way["lag_p99"]

    b1 = {"bridge": f"B{bid}", "from_app": "old", "to_app": "new"}
    assert sample(http, "imshift_bridge_messages", state="ok", **b1) == 2
    assert sample(http, "imshift_bridge_lag_seconds_count", **b1) == 2
    assert sample(http, "imshift_bridge_lag_seconds_bucket", le="+Inf", **b1) == 2
    assert sample(http, "imshift_feed_ack_seconds_count") >= 7
    gained = {k: sample(http, "imshift_feed_deliveries_total", app=k[0], answer=k[1]) - v
              for k, v in deliveries.items()}
    # The repeat is answered "stored" too (acknowledged: the vendor must stop sending it).
    assert gained == {("old", "stored"): 3, ("old", "ignored"): 1, ("old", "refused 401"): 1,
                      ("?", "refused 404"): 1, ("new", "refused 404"): 1}

    # Unknown, out of range, and each state change with its refusal.
    missing = http.get(f"/api/bridges/{bid + 1}")
    assert missing.status_code == 404 and missing.json()["detail"].startswith(f"no bridge B{bid + 1}")
    assert http.post(f"/api/bridges/{bid + 1}/pause").status_code == 404
    for path in (f"/api/bridges/{2**32}", f"/api/bridges/{2**31}/pause", "/api/bridges/0",
                 f"/api/bridges/{bid}/frobnicate"):
        r = http.post(path) if path.count("/") == 4 else http.get(path)
        assert r.status_code == 422, (path, r.text)
    refused = http.post(f"/api/bridges/{bid}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"bridge B{bid} is active: it cannot resume (`imshift bridge status B{bid}`)")
    # Nothing failed here: a retry sets nothing to go again; an unknown bridge is a 404.
    assert http.post(f"/api/bridges/{bid}/retry", params={"unknown": True}).json() == {"id": bid, "retried": 0}
    assert http.post(f"/api/bridges/{bid + 1}/retry").status_code == 404
    assert http.post(f"/api/bridges/{bid}/pause").json() == {"id": bid, "status": "paused"}
    assert http.post(f"/api/bridges/{bid}/pause").status_code == 409
    assert http.get(f"/api/bridges/{bid}").json()["status"] == "paused"
    assert http.post(f"/api/bridges/{bid}/resume").json() == {"id": bid, "status": "active"}
    assert http.post(f"/api/bridges/{bid}/remove").json() == {"id": bid, "status": "removed"}
    assert http.get("/api/bridges").json() == []
    assert [b["status"] for b in http.get("/api/bridges", params={"removed": True}).json()] == ["removed"]
    assert http.get(f"/api/bridges/{bid}").json()["status"] == "removed"
    gone = http.post(f"/api/bridges/{bid}/resume")
    assert gone.status_code == 409 and f"bridge B{bid} is removed" in gone.json()["detail"]
    after = hook("old", copy(ctx, "old", text("9006", "user_000001", "user_000002")))
    assert after.status_code == 404  # a removed bridge takes no feed
    assert bridges.report(ctx.engine, bid)["directions"][0]["refused"] == 2
    assert sample(http, "imshift_bridge_messages", **b1) == 0  # removed bridges leave the metrics

    # Every bridge route needs the token; a wrong one is refused too.
    for method, path in (("GET", "/api/bridges"), ("GET", f"/api/bridges/{bid}"),
                         ("POST", f"/api/bridges/{bid}/pause")):
        for headers in (NO_TOKEN, {"Authorization": "Bearer not-it"}):
            r = http.request(method, path, headers=headers)
            assert r.status_code == 401 and "IMSHIFT_API_TOKEN" in r.json()["detail"], (path, r.text)


def test_the_bridge_routes_keep_to_their_schema(tmp_path):
    """schemathesis over the bridge routes, with a bridge in the database
    (tests/test_api.py fuzzes every route over a database without one)."""
    ctx = context(f"sqlite:///{tmp_path}/s.db", apps=APPS)
    request = runs.RunRequest(users=write_users(tmp_path / "u.csv", 3))
    run_id = runs.plan_run(ctx.engine, "old", ctx.target("new"), request, chunk_size=10).run_id
    bid = bridges.add(ctx.engine, source_app="old", app="new", run_id=run_id, both_ways=True,
                      hold=60, settle=0.5)
    with ctx.engine.begin() as conn:  # a failure in the report: its dicts are checked too
        from imshift.vendors.feeds import FeedMessage

        bridge = bridges.get(conn, bid)
        bridges.receive(conn, bridge, "new", [FeedMessage("m1", "user_000001", "user_000002", False,
                                                          int(time.time() * 1000), "LOCATION")])
        conn.execute(bridges.messages.update().values(state="rejected", code="kind", message="no"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(ctx, TOKEN))
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance,
              content_type_conformance]
    operations = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/api/bridges")]
    assert len(operations) == 4  # the list, one bridge, retry, and pause/resume/remove
    by_path = {(o.method.upper(), o.path): o for o in operations}
    seen = []
    for method, action in (("GET", ""), ("POST", "pause"), ("POST", "pause"), ("POST", "resume"),
                           ("POST", "remove")):
        path = "/api/bridges/{bridge_id}" + ("/{action}" if action else "")
        case = by_path[method, path].Case(path_parameters={"bridge_id": bid, **(
            {"action": action} if action else {})})
        seen.append(case.call_and_validate(headers=AUTH, checks=checks).status_code)
    assert seen == [200, 200, 409, 200, 200]
    # Fuzzed over a fresh bridge too: generated ids are often small enough to name it.
    bridges.add(ctx.engine, source_app="old", app="new", run_id=run_id, both_ways=False, hold=60, settle=0.5)
    codes = set()
    for operation, mode in itertools.product(operations, GenerationMode):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            codes.add(case.call_and_validate(headers=AUTH, checks=checks).status_code)

        call()
    assert {200, 422} <= codes, codes
    listed = by_path["GET", "/api/bridges"].Case(query={"removed": True})
    shown = {b["id"]: b for b in listed.call_and_validate(headers=AUTH, checks=checks).json()}
    assert shown[bid]["last_failures"] == [{"from_app": "new", "msg_id": "m1", "state": "rejected",
                                            "code": "kind", "message": "no"}]
