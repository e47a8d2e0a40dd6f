"""The HTTP API over real databases while real jobs run (httpx over ASGITransport)."""

import csv
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from imshift.api import create_app
from imshift.cli import app as cli_app
from imshift.jobs import control, kinds, run_control, runs, schedules
from imshift.jobs.progress import progress
from imshift.workers.embedded import in_process_workers

from api_support import (AUTH, TOKEN, api, cli, cli_refusal, context, fire,  # noqa: F401  (pytest fixtures, used by name)
                         wait_until_done, write_users)

NEW = {"vendor": "netease", "sandbox": True}


def plan(ctx, path, users, **kw):
    return kinds.plan_user_migration(ctx.engine, ctx.target("new"), write_users(path, users, **kw),
                                     source_app="new", chunk_size=ctx.settings.chunk_size).report.job_id


def cli_status(monkeypatch, database_url, job_id):
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", database_url)
    monkeypatch.setenv("IMSHIFT_CONFIG", "/nonexistent/imshift.toml")
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(cli_app, ["status", str(job_id), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["jobs"][0]


def test_progress_matches_the_cli_and_keyset_pages_cover_every_item_once(database_url, tmp_path,
                                                                         api, monkeypatch):
    ctx = context(database_url, chunk_size=50, apps={"new": {**NEW, "rates": {"register": 400}}})
    job = plan(ctx, tmp_path / "u.csv", 600, bad_rows={7: {"user_id": "no good"}})
    http = api(ctx)
    ctx.runtime  # noqa: B018  (configures the workers)
    seen_running = []
    with in_process_workers(ctx.broker, threads=2):
        control.start(ctx.engine, ctx.broker, job)
        while True:  # page through every item while the workers record them
            seqs, after = [], -1
            while True:
                page = http.get(f"/api/jobs/{job}/items", params={"after": after, "limit": 97}).json()
                seqs += [i["seq"] for i in page["items"]]
                if page["next_after"] is None:
                    break
                after = page["next_after"]
            assert seqs == list(range(600))
            p = http.get(f"/api/jobs/{job}").json()
            if p["status"] != "running":
                break
            seen_running.append(p["done"])
        wait_until_done(ctx, job, 30)
    assert seen_running, "the job finished before a page was read while it ran"
    p = http.get(f"/api/jobs/{job}").json()
    status = cli_status(monkeypatch, database_url, job)
    assert {k: p[k] for k in status} == status
    assert p["counts"] == {"ok": 599, "rejected": 1} and p["done"] == 600
    assert [f["id"] for f in p["failures"]] == ["no good"]
    assert len(p["history"]) >= 2 and p["history"][-1]["done"] == 600  # the page's rate chart
    by_outcome = []
    for outcome in ("ok", "rejected"):
        after = -1
        while after is not None:
            page = http.get(f"/api/jobs/{job}/items",
                            params={"outcome": outcome, "after": after, "limit": 300}).json()
            assert {i["outcome"] for i in page["items"]} <= {outcome}
            by_outcome += [i["seq"] for i in page["items"]]
            after = page["next_after"]
    assert sorted(by_outcome) == list(range(600))
    one = http.get(f"/api/jobs/{job}/items/user_000042").json()
    assert one["outcome"] == "ok" and one["row"] == 44 and one["result"] == {"user_id": "user_000042"}
    assert http.get(f"/api/jobs/{job}/items/nobody").status_code == 404
    listed = http.get("/api/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [job] and listed["next_before"] is None
    assert http.get("/api/jobs/999999").status_code == 404


def test_control_changes_state_and_a_wrong_state_is_a_409(database_url, tmp_path, api, monkeypatch):
    ctx = context(database_url, chunk_size=10, apps={"new": {**NEW, "rates": {"register": 40}}})
    job = plan(ctx, tmp_path / "u.csv", 400)
    http = api(ctx)
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker, threads=2):
        r = http.post(f"/api/jobs/{job}/pause")
        assert r.status_code == 409 and "cannot make it paused (only from running)" in r.json()["detail"]
        control.start(ctx.engine, ctx.broker, job)
        r = http.post(f"/api/jobs/{job}/pause")
        assert r.status_code == 200 and r.json()["status"] == "paused"
        r = http.post(f"/api/jobs/{job}/pause")
        assert r.status_code == 409 and r.json()["detail"] == (
            f"job {job} is paused; cannot make it paused (only from running)")
        r = http.post(f"/api/jobs/{job}/retry")
        assert r.status_code == 409 and "resume" in r.json()["detail"]
        r = http.post(f"/api/jobs/{job}/resume")
        assert r.status_code == 200 and r.json()["status"] == "running"
        r = http.post(f"/api/jobs/{job}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["changed"] > 0
        refused = {action: http.post(f"/api/jobs/{job}/{action}") for action in
                   ("resume", "pause", "cancel", "retry")}
    p = progress(ctx.engine, job)
    assert p.status == "cancelled" and p.counts.get("cancelled", 0) > 0
    for action, r in refused.items():  # the reason the CLI gives, in the same words
        assert r.status_code == 409, (action, r.text)
        assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, action, str(job)), action
        assert r.json()["detail"].startswith(f"job {job} is cancelled"), r.text
    assert progress(ctx.engine, job).status == "cancelled"  # the refused calls changed nothing
    assert http.post("/api/jobs/424242/pause").status_code == 404


def test_the_token_is_needed_and_secrets_never_appear(database_url, tmp_path, api):
    key = Fernet.generate_key().decode()
    secret_app = {"vendor": "netease", "app_key": "k" * 32, "app_secret": "SECRET-never-shown-9876"}
    ctx = context(database_url, token_key=key, chunk_size=50,
                  apps={"new": NEW, "tok": {"vendor": "netease", "sandbox": True}, "real": secret_app})
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"user_{i:06d}\n" for i in range(20)))
    reg = plan(ctx, tmp_path / "u.csv", 20)
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        control.start(ctx.engine, ctx.broker, reg)
        wait_until_done(ctx, reg, 30)
        job = kinds.plan_token_refresh(ctx.engine, ctx.target("new"), ids, chunk_size=50).report.job_id
        control.start(ctx.engine, ctx.broker, job)
        assert wait_until_done(ctx, job, 30).counts == {"ok": 20}
    http = api(ctx)
    anonymous = api(ctx, host="203.0.113.9")
    responses = []
    for path in ("/api/jobs", f"/api/jobs/{job}", f"/api/jobs/{job}/items",
                 f"/api/jobs/{job}/items/user_000003", "/openapi.json", "/metrics", "/"):
        r = http.get(path)
        assert r.status_code == 200, (path, r.text)
        responses.append(r.text)
        bare = http.get(path, headers={"Authorization": ""})
        wrong = http.get(path, headers={"Authorization": "Bearer not-it"})
        if path == "/":
            assert "IMSHIFT_API_TOKEN" in bare.text and 'name="token"' in bare.text  # the login form
        elif path in ("/openapi.json", "/metrics"):  # open on loopback only
            assert bare.status_code == 200
            assert anonymous.get(path, headers={"Authorization": ""}).status_code == 401
            assert anonymous.get(path).status_code == 200
        else:
            assert bare.status_code == 401 and wrong.status_code == 401, path
            assert "IMSHIFT_API_TOKEN" in bare.json()["detail"]
    for r in (http.post(f"/api/jobs/{job}/pause", headers={"Authorization": ""}),):
        assert r.status_code == 401
    # The page's login puts the token in an HttpOnly cookie, which the API takes.
    r = http.get("/", params={"token": TOKEN}, headers={"Authorization": ""})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert http.get("/", params={"token": "wrong"}, headers={"Authorization": ""}).status_code == 401
    jar = {"Authorization": "", "Cookie": f"imshift_token={TOKEN}"}
    assert http.get(f"/api/jobs/{job}", headers=jar).status_code == 200
    r = http.post("/login", content=f"token={TOKEN}",
                  headers={"Authorization": "", "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and "imshift_token=" in r.headers["set-cookie"]
    # Tokens appear only in the exports, and only with the key set.
    export = http.get(f"/api/jobs/{job}/results", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == 20 and all(row["token"] for row in rows)
    tokens = [row["token"] for row in rows]
    lines = http.get(f"/api/jobs/{job}/results", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["token"] for line in lines] == tokens
    everything = " ".join(responses)
    for secret in tokens + [key, secret_app["app_secret"], TOKEN]:
        assert secret not in everything
    keyless = api(context(database_url, apps={"new": NEW}))
    r = keyless.get(f"/api/jobs/{job}/results", params={"format": "csv"})
    assert "IMSHIFT_TOKEN_KEY is not set" in r.headers["x-imshift-warning"]
    assert not any(row["token"] for row in csv.DictReader(io.StringIO(r.text)))
    other = api(context(database_url, token_key=Fernet.generate_key().decode(), apps={"new": NEW}))
    r = other.get(f"/api/jobs/{job}/results", params={"format": "csv"})
    assert r.status_code == 409 and "another key" in r.json()["detail"]


def test_csv_ids_are_exact_and_data_passes_through(tmp_path, api):
    ctx = context(f"sqlite:///{tmp_path}/x.db", apps={"new": NEW})
    job = plan(ctx, tmp_path / "u.csv", 3, bad_rows={1: {"user_id": "=cmd|' /C calc'!A0"}})
    http = api(ctx)
    rows = list(csv.DictReader(io.StringIO(http.get(f"/api/jobs/{job}/results").text)))
    assert rows[1]["id"] == "=cmd|' /C calc'!A0"  # a machine value: exact (jobs/exports.py)
    lines = http.get(f"/api/jobs/{job}/results?format=jsonl&outcome=rejected").text.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["=cmd|' /C calc'!A0"]


def test_serve_without_a_token_stays_on_loopback(monkeypatch, tmp_path):
    monkeypatch.delenv("IMSHIFT_API_TOKEN", raising=False)
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("IMSHIFT_CONFIG", "/nonexistent/imshift.toml")
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "IMSHIFT_API_TOKEN is not set, so the server listens on loopback only" in result.output


# -- migration runs ---------------------------------------------------------------------------

QUICK = {op: 500.0 for op in ("import_friends", "create_group", "add_members", "get_profiles",
                              "get_friends", "get_members")}
RUN_APPS = {"old": {"vendor": "rongcloud", "sandbox": True},
            "new": {**NEW, "rates": {"register": 40, **QUICK}}}


def plan_run(ctx, tmp_path, users=80):
    """A run of accounts (one refused), friends (one pair naming the refused
    account: skipped once the accounts are done), a group and verify."""
    write_users(tmp_path / "u.csv", users, bad_rows={7: {"user_id": "no good"}})
    (tmp_path / "f.csv").write_text("user_id,friend_id\n" + "".join(
        f"user_{i:06d},user_{i + 1:06d}\n" for i in range(20, 40)) + "no good,user_000009\n",
        encoding="utf-8")
    (tmp_path / "g.jsonl").write_text(json.dumps(
        {"group_id": "g_1", "name": "Grüppe", "owner": "user_000010",
         "members": ["user_000011", "user_000012"]}) + "\n", encoding="utf-8")
    request = runs.RunRequest(users=tmp_path / "u.csv", friends=tmp_path / "f.csv",
                              groups=tmp_path / "g.jsonl", verify=True)
    return runs.plan_run(ctx.engine, "old", ctx.target("new"), request,
                         chunk_size=ctx.settings.chunk_size).run_id


def wait_for_run(http, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = http.get(f"/api/runs/{name}").json()
        if run["status"] != "running":
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {name} still running after {timeout} s")


def test_a_run_in_the_api_matches_the_cli_stage_by_stage_and_steers(database_url, tmp_path, api,
                                                                    monkeypatch):
    ctx = context(database_url, chunk_size=10, apps=RUN_APPS)
    run_id = plan_run(ctx, tmp_path)
    name = f"R{run_id}"
    http = api(ctx)
    listed = http.get("/api/runs").json()
    assert [r["name"] for r in listed["runs"]] == [name] and listed["next_before"] is None
    planned = listed["runs"][0]
    assert (planned["id"], planned["source_app"], planned["app"], planned["status"],
            planned["current_stage"]) == (run_id, "old", "new", "planned", "accounts")
    assert [(s["stage"], s["status"]) for s in planned["stages"]] == [
        (stage, "planned") for stage in ("accounts", "friends", "groups", "members", "verify")]
    assert planned["stages"][0]["counts"] == {"pending": 79, "rejected": 1}
    r = http.post(f"/api/runs/{name}/pause")
    assert r.status_code == 409
    assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, "pause", name) == (
        f"run {name} is planned: nothing runs to pause")
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker, threads=2):
        r = http.post(f"/api/runs/{name}/resume")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": run_id, "name": name, "status": "running", "stage": "accounts",
                            "changed": 0, "message": f"run {name} started at its accounts stage"}
        r = http.post(f"/api/runs/{run_id}/pause")  # the number alone names the run too
        assert r.status_code == 200 and r.json()["status"] == "paused" and r.json()["stage"] == "accounts"
        paused = http.get(f"/api/runs/{name}").json()
        assert paused["status"] == "paused" and paused["stages"][0]["status"] == "paused"
        assert paused["current_stage"] == "accounts"
        r = http.post(f"/api/runs/{name}/pause")
        assert r.status_code == 409
        assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, "pause", name) == (
            f"run {name} is paused: nothing runs to pause")
        r = http.post(f"/api/runs/{name}/resume")
        assert r.status_code == 200 and r.json()["message"] == f"run {name} resumed at its accounts stage"
        done = wait_for_run(http, name)
    assert done["status"] == "finished" and done["current_stage"] is None, done
    status = json.loads(cli(monkeypatch, database_url, "status", name, "--json").output)["runs"][0]
    assert (status["id"], status["from"], status["to"], status["status"]) == (name, "old", "new", "finished")
    for shown, cli_stage in zip(done["stages"], status["stages"], strict=True):
        assert {k: shown[k] for k in cli_stage} == cli_stage
        assert shown["done"] == shown["total"] and shown["eta_seconds"] in (0.0, None)
    stages = {s["stage"]: s for s in done["stages"]}
    assert stages["accounts"]["counts"] == {"ok": 79, "rejected": 1}
    assert stages["friends"]["counts"] == {"ok": 20, "skipped": 1}  # the pair naming "no good"
    assert stages["groups"]["counts"] == {"ok": 1} and stages["accounts"]["rate"] > 0
    # 79 profiles, 1 group, the friends of 23 users: those of "no good" are skipped
    assert stages["verify"]["counts"] == {"ok": 79 + 1 + 22, "skipped": 1}
    # The id map: the CLI's export, byte for byte, and as JSON Lines.
    mapped = [tuple(row) for row in run_control.id_map_rows(ctx.engine, run_id)]
    assert len(mapped) == 79 + 1 and ("group", "g_1") in {m[:2] for m in mapped}
    export = http.get(f"/api/runs/{name}/idmap")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert export.text.splitlines() == cli(monkeypatch, database_url, "idmap", name).output.splitlines()
    assert [tuple(row) for row in csv.reader(io.StringIO(export.text))][1:] == mapped
    lines = http.get(f"/api/runs/{name}/idmap", params={"format": "jsonl"}).text.splitlines()
    assert [tuple(json.loads(line).values()) for line in lines] == mapped
    # A finished run refuses what the CLI refuses, in the same words.
    for action in ("resume", "pause", "cancel"):
        r = http.post(f"/api/runs/{name}/{action}")
        assert r.status_code == 409
        assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, action, name), action
    for method, path in (("GET", "/api/runs/R999"), ("GET", "/api/runs/999/idmap"),
                         ("POST", "/api/runs/R999/resume"), ("GET", f"/api/runs/R{2**35}")):
        r = http.request(method, path)
        assert r.status_code == 404 and r.json()["detail"].startswith("no run R"), (path, r.text)
    assert http.get("/api/runs/job7").status_code == 422


def test_runs_page_newest_first_and_cancel_closes_every_stage(database_url, tmp_path, api,
                                                               monkeypatch):
    ctx = context(database_url, chunk_size=10, apps=RUN_APPS)
    ids = []
    for n in range(3):
        (tmp_path / str(n)).mkdir()
        ids.append(plan_run(ctx, tmp_path / str(n), users=20))
    http = api(ctx)
    first = http.get("/api/runs", params={"limit": 2}).json()
    assert [r["id"] for r in first["runs"]] == ids[:0:-1] and first["next_before"] == ids[1]
    rest = http.get("/api/runs", params={"limit": 2, "before": first["next_before"]}).json()
    assert [r["id"] for r in rest["runs"]] == ids[:1] and rest["next_before"] is None
    open_items = sum(s["counts"].get("pending", 0) for s in first["runs"][0]["stages"])
    r = http.post(f"/api/runs/R{ids[2]}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["changed"] == open_items > 0
    assert r.json()["message"] == f"run R{ids[2]} cancelled ({open_items} items closed)"
    cancelled = http.get(f"/api/runs/R{ids[2]}").json()
    assert {s["status"] for s in cancelled["stages"]} == {"cancelled"}
    assert all("pending" not in s["counts"] for s in cancelled["stages"])
    for action in ("resume", "cancel", "pause"):
        r = http.post(f"/api/runs/R{ids[2]}/{action}")
        assert r.status_code == 409
        assert r.json()["detail"] == cli_refusal(monkeypatch, database_url, action, f"R{ids[2]}")
    assert http.get("/api/runs/R%d" % ids[0]).json()["status"] == "planned"  # the others untouched


def test_the_detail_keeps_its_failures_and_progress_reads_no_items(database_url, tmp_path, api,
                                                                    monkeypatch):
    ctx = context(database_url, chunk_size=20, apps={"new": NEW})
    bad = {i: {"user_id": f"bad id {i}"} for i in (3, 5, 40)}
    job = plan(ctx, tmp_path / "u.csv", 60, bad_rows=bad)
    http = api(ctx)
    detail = http.get(f"/api/jobs/{job}").json()
    assert [f["id"] for f in detail["failures"]] == ["bad id 3", "bad id 5", "bad id 40"]
    assert [f["seq"] for f in detail["failures"]] == [3, 5, 40]
    progress_only = http.get(f"/api/jobs/{job}/progress").json()
    assert "failures" not in progress_only
    assert {k: detail[k] for k in progress_only if k != "history"} == {
        k: v for k, v in progress_only.items() if k != "history"}
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        control.start(ctx.engine, ctx.broker, job)
        wait_until_done(ctx, job, 30)
    finished = http.get(f"/api/jobs/{job}").json()  # settled: read again, whatever the cache held
    assert finished["status"] == "finished" and finished["counts"] == {"ok": 57, "rejected": 3}
    assert [f["id"] for f in finished["failures"]] == ["bad id 3", "bad id 5", "bad id 40"]
    # The CLI's summary lists the same first problems, in the same order (one query for both).
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", database_url)
    monkeypatch.setenv("IMSHIFT_CONFIG", "/nonexistent/imshift.toml")
    monkeypatch.delenv("REDIS_URL", raising=False)
    shown = CliRunner().invoke(cli_app, ["status", str(job), "--watch"]).output
    assert "first problems" in shown
    where = [shown.find(f"bad id {i} ") for i in (3, 5, 40)]
    assert -1 not in where and where == sorted(where), shown


# -- schemathesis over /openapi.json -----------------------------------------------------------

@pytest.fixture
def fuzzed_app(database_url, tmp_path):
    ctx = context(database_url, chunk_size=20, apps={**RUN_APPS, "new": {**NEW, "rates": QUICK}})
    job = plan(ctx, tmp_path / "u.csv", 60, bad_rows={2: {"user_id": "bad id"}})
    (tmp_path / "run").mkdir()
    run_id = plan_run(ctx, tmp_path / "run", users=30)
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        control.start(ctx.engine, ctx.broker, job)
        wait_until_done(ctx, job, 30)
        run_control.start(ctx.engine, ctx.broker, run_id)
        deadline = time.monotonic() + 60
        while run_control.run_progress(ctx.engine, run_id).status == "running":
            assert time.monotonic() < deadline, "the run did not finish"
            time.sleep(0.1)
        hello = {"sender": "", "message": {"text": "hello"}}
        daily = schedules.add(ctx.engine, ctx.target("new"), command="broadcast", params=hello,
                              cron="0 9 * * *", tz="Asia/Shanghai")
        wait_until_done(ctx, fire(ctx, daily).job_id, 30)  # a schedule with a fire and its job
        schedules.add(ctx.engine, ctx.target("new"), command="broadcast", params=hello,
                      at=time.time() + 7 * 86400)  # and one never fired
    plan(ctx, tmp_path / "v.csv", 30)  # one left planning, one finished
    (tmp_path / "run2").mkdir()
    plan_run(ctx, tmp_path / "run2", users=10)  # a run finished, one planned
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(ctx, TOKEN)), daily


def test_no_generated_request_gets_a_500_or_breaks_the_schema(fuzzed_app):
    schema, daily = fuzzed_app
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance,
              content_type_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 22  # jobs 10, runs 6, schedules 6
    statuses: list[tuple[str, int]] = []

    def fuzz(operation, mode):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call_and_validate(headers=AUTH, checks=checks)
            statuses.append((operation.path, response.status_code))

        call()

    for operation, mode in itertools.product(operations, GenerationMode):
        fuzz(operation, mode)
    codes = {code for _, code in statuses}
    assert len(statuses) >= 10 * len(operations) and {200, 404, 422} <= codes, codes
    # Generated ids seldom name a schedule: a fired one's answers are checked against the schema too.
    by_path = {(o.method.upper(), o.path): o for o in operations}
    seen = []
    for method, action in (("GET", ""), ("GET", "/fires"), ("POST", "/pause"), ("POST", "/pause"),
                           ("POST", "/resume"), ("POST", "/remove")):
        case = by_path[method, "/api/schedules/{schedule_id}" + action].Case(
            path_parameters={"schedule_id": daily})
        seen.append(case.call_and_validate(headers=AUTH, checks=checks).status_code)
    assert seen == [200, 200, 200, 409, 200, 200]


# -- memory of a streamed export ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_a_100k_item_export_streams_in_bounded_memory(database_url, tmp_path):
    """The server process's peak memory over a 100,000-item export, on
    SQLite and PostgreSQL: under 150 MB, and little above what it held
    before (the whole job in memory adds about 40 MB on SQLite)."""
    ctx = context(database_url, apps={"new": NEW})
    job = plan(ctx, tmp_path / "u.csv", 100_000)
    port = _free_port()
    env = {**os.environ, "IMSHIFT_DATABASE_URL": database_url, "IMSHIFT_API_TOKEN": TOKEN,
           "IMSHIFT_CONFIG": str(tmp_path / "none.toml"), "IMSHIFT_APPS__NEW__VENDOR": "netease",
           "IMSHIFT_APPS__NEW__SANDBOX": "true"}
    env.pop("REDIS_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "imshift.cli", "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the server did not answer in 30 s"
                time.sleep(0.2)
        base = f"http://127.0.0.1:{port}/api/jobs/{job}/results"
        # An export of no items first: the code and connections an export needs are loaded.
        assert httpx.get(base, params={"outcome": "failed"}, headers=AUTH, timeout=30).status_code == 200
        before_kb = _memory_kb(server.pid, "VmRSS")
        lines = 0
        with httpx.stream("GET", base + "?format=jsonl", headers=AUTH, timeout=60) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                lines += 1
        peak_kb = _memory_kb(server.pid, "VmHWM")
        print(f"server over a 100,000-item export: {before_kb / 1024:.0f} MB before, "
              f"peak {peak_kb / 1024:.0f} MB")
        assert lines == 100_000
        assert peak_kb < 150 * 1024
        assert peak_kb - before_kb < 25 * 1024
    finally:
        server.terminate()
        server.wait(10)
