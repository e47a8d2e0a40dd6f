"""Schedules over the HTTP API on SQLite and PostgreSQL: schedules made by
jobs/schedules.py and fired on a fake clock (as tests/jobs/test_schedules.py)
with their jobs run by real in-process workers; listed newest first in
pages, shown, their fires with each job's counts as the database holds
them, and pause, resume and remove with the CLI's refusals as 409s."""

import time

from imshift.jobs import control, kinds, schedules
from imshift.jobs.progress import progress
from imshift.jobs.schedules import parse_at
from imshift.vendors.operations import encode_message
from imshift.vendors.vocabulary import Message
from imshift.workers.embedded import in_process_workers

from api_support import api, cli_refusal, context, fire, wait_until_done, write_users  # noqa: F401  (pytest fixtures, used by name)

NEW = {"vendor": "netease", "sandbox": True}
SECRET = "SECRET-never-shown-4321"
APPS = {"new": NEW, "real": {"vendor": "netease", "app_key": "k" * 32, "app_secret": SECRET}}
T0 = parse_at("2026-06-01 09:01", "UTC")  # the fake clock's start
HELLO = {"sender": "", "message": encode_message(Message(text="hello"))}


def test_schedules_are_listed_shown_and_their_fires_carry_their_jobs_counts(database_url,
                                                                             tmp_path, api):
    ctx = context(database_url, chunk_size=10, apps=APPS)
    to = write_users(tmp_path / "to.csv", 26, bad_rows={25: {"user_id": "no good"}})
    send = schedules.add(ctx.engine, ctx.target("new"), command="send", cron="*/5 * * * *",
                         tz="Asia/Shanghai", now=T0,
                         params={"sender": "user_000000", "message": {"text": "Grüße 🚀"}, "to": str(to)})
    late = schedules.add(ctx.engine, ctx.target("new"), command="broadcast", params=HELLO,
                         at=T0 + 120, catch_up=30, now=T0)  # due before the send's first fire
    gone = schedules.add(ctx.engine, ctx.target("real"), command="broadcast", params=HELLO,
                         at=T0 + 3600, now=T0)
    schedules.remove(ctx.engine, gone)
    http = api(ctx)

    first = http.get("/api/schedules", params={"limit": 1}).json()  # the removed one is left out
    assert [s["id"] for s in first["schedules"]] == [late] and first["next_before"] == late
    rest = http.get("/api/schedules", params={"limit": 1, "before": late}).json()
    assert [s["id"] for s in rest["schedules"]] == [send]
    assert http.get("/api/schedules", params={"limit": 1, "before": send}).json() == {
        "schedules": [], "next_before": None}
    every = http.get("/api/schedules", params={"removed": True}).json()
    assert [(s["id"], s["status"]) for s in every["schedules"]] == [
        (gone, "removed"), (late, "active"), (send, "active")] and every["next_before"] is None
    assert every["schedules"][1]["at"] == T0 + 120 and every["schedules"][1]["cron"] is None
    assert every["schedules"][1]["at_time"] == "2026-06-01 09:03:00+00:00"
    shown = http.get(f"/api/schedules/{send}").json()
    row = schedules.get(ctx.engine, send)
    assert shown == {**shown, "command": "send", "app": "new", "status": "active", "at": None,
                     "cron": "*/5 * * * *", "tz": "Asia/Shanghai", "next_at": row.next_at,
                     "next_fire": "2026-06-01 17:05:00+08:00", "catch_up_seconds": 900.0,
                     "sender": "user_000000", "recipients": str(to.resolve()),
                     "message": {"text": "Grüße 🚀"}, "last_fire": None}
    assert http.get(f"/api/schedules/{send}/fires").json() == {"fires": [], "next_before": None}

    assert fire(ctx, late, late=60).state == "missed"  # past its 30 s catch-up window
    ctx.runtime  # noqa: B018  (configures the workers)
    jobs = []
    with in_process_workers(ctx.broker, threads=2):
        accounts = kinds.plan_user_migration(ctx.engine, ctx.target("new"), to, source_app="new",
                                             chunk_size=10).report.job_id  # the recipients exist
        control.start(ctx.engine, ctx.broker, accounts)
        wait_until_done(ctx, accounts, 30)
        for _ in range(2):  # two fires, five minutes apart on the fake clock
            fired = fire(ctx, send)
            assert fired.state == "fired"
            jobs.append(fired.job_id)
            wait_until_done(ctx, fired.job_id, 30)

    page = http.get(f"/api/schedules/{send}/fires").json()
    assert [f["job_id"] for f in page["fires"]] == jobs[::-1] and page["next_before"] is None
    for f in page["fires"]:
        p = progress(ctx.engine, f["job_id"])
        assert f["state"] == "fired" and f["job"]["status"] == p.status == "finished"
        assert f["job"]["counts"] == p.counts == {"ok": 25, "rejected": 1}  # "no good" at planning
        assert f["job"]["done"] == p.total == 26
    assert [f["fire_time"] for f in page["fires"]] == ["2026-06-01 17:10:00+08:00",
                                                       "2026-06-01 17:05:00+08:00"]
    one = http.get(f"/api/schedules/{send}/fires", params={"limit": 1}).json()
    assert one["fires"] == page["fires"][:1] and one["next_before"] == page["fires"][0]["fire_at"]
    older = http.get(f"/api/schedules/{send}/fires",
                     params={"limit": 1, "before": one["next_before"]}).json()
    assert older["fires"] == page["fires"][1:]
    listed = {s["id"]: s for s in http.get("/api/schedules").json()["schedules"]}
    assert listed[send]["last_fire"] == page["fires"][0]
    assert listed[send]["next_fire"] == "2026-06-01 17:15:00+08:00"
    [missed] = http.get(f"/api/schedules/{late}/fires").json()["fires"]
    assert missed["state"] == "missed" and missed["job"] is None and missed["job_id"] is None
    assert "catch-up window (30 s; it was 60 s late)" in missed["note"]
    assert listed[late]["status"] == "done" and listed[late]["next_at"] is None
    assert listed[late]["last_fire"] == missed
    everything = " ".join(http.get(path).text for path in (
        "/api/schedules?removed=true", f"/api/schedules/{gone}", f"/api/schedules/{send}/fires"))
    assert SECRET not in everything and "k" * 32 not in everything


def test_pause_resume_and_remove_change_state_and_a_wrong_state_is_the_clis_409(
        database_url, api, monkeypatch):
    ctx = context(database_url, apps={"new": NEW})
    sid = schedules.add(ctx.engine, ctx.target("new"), command="broadcast", params=HELLO,
                        cron="0 9 * * *", tz="Europe/Berlin", now=T0)
    http = api(ctx)

    def refused(action):
        r = http.post(f"/api/schedules/{sid}/{action}")
        assert r.status_code == 409, r.text
        assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, "schedule", action,
                                                 str(sid))
        return r.json()["detail"]

    assert refused("resume") == f"schedule {sid} is active; cannot make it active (only from paused)"
    r = http.post(f"/api/schedules/{sid}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert schedules.get(ctx.engine, sid).status == "paused"
    assert http.get(f"/api/schedules/{sid}").json()["status"] == "paused"
    refused("pause")
    before = time.time()
    r = http.post(f"/api/schedules/{sid}/resume").json()
    row = schedules.get(ctx.engine, sid)
    assert r["status"] == row.status == "active"
    assert r["next_at"] == row.next_at > before  # from now on: the paused days are not made up
    assert r["message"] == f"schedule {sid} resumed; next fire {r['next_fire']}"
    assert r["next_fire"].endswith(("09:00:00+01:00", "09:00:00+02:00"))
    r = http.post(f"/api/schedules/{sid}/remove").json()
    assert r["status"] == schedules.get(ctx.engine, sid).status == "removed"
    assert r["next_at"] is None and r["next_fire"] is None
    for action in ("pause", "resume", "remove"):
        refused(action)
    assert http.get("/api/schedules").json()["schedules"] == []  # removed: listed only when asked
    assert http.get(f"/api/schedules/{sid}").json()["status"] == "removed"  # kept, with its history

    for method, path in (("GET", "/api/schedules/999"), ("GET", "/api/schedules/999/fires"),
                         ("POST", "/api/schedules/999/pause"), ("POST", "/api/schedules/999/resume"),
                         ("POST", "/api/schedules/999/remove")):
        r = http.request(method, path)
        assert r.status_code == 404 and r.json()["detail"] == "no schedule 999", (path, r.text)
        bare = http.request(method, path.replace("999", str(sid)), headers={"Authorization": ""})
        assert bare.status_code == 401, path
    assert http.get("/api/schedules/0").status_code == 422
