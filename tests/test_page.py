"""The live page in a real browser (Debian's chromium driven by Playwright)
while a job runs: log in, watch the bar and counts move, pause and resume
with the buttons, and see the finished state match the database; a
schedule listed, its fire's job appearing once it fires, and its pause and
resume buttons; and a migration run's stages as a row of bars, the running
one marked."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from imshift.api import create_app
from imshift.jobs import kinds, run_control, runs, schedules
from imshift.jobs.progress import progress
from imshift.workers.embedded import in_process_workers

from api_support import context, fire, write_users

CHROMIUM = os.environ.get("IMSHIFT_CHROMIUM", "/usr/bin/chromium")
TOKEN = "page-token-for-tests-0123456789"
USERS = 240
QUICK = {op: 200.0 for op in ("import_friends", "create_group", "add_members", "get_profiles",
                              "get_friends", "get_members")}


def launch(pw):
    """Chromium, given a second try: a cold start on a busy machine can pass
    the launch timeout, and the launch is not what these tests check."""
    from playwright.sync_api import TimeoutError as LaunchTimeout

    for attempt in (1, 2):
        try:
            return pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=60_000)
        except LaunchTimeout:
            if attempt == 2:
                raise


@pytest.fixture
def served(tmp_path):
    """The app on a real loopback port (a browser needs one), in a thread."""
    ctx = context(f"sqlite:///{tmp_path}/p.db", chunk_size=10,
                  apps={"old": {"vendor": "rongcloud", "sandbox": True},
                        "new": {"vendor": "netease", "sandbox": True,
                                "rates": {"register": 60, **QUICK}}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ctx, TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield ctx, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(check, timeout=20.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not seen within {timeout} s")


def need_chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test does it as root)")


def logged_in(browser, base):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.set_default_timeout(20_000)
    page.goto(base + "/")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    return page


def test_the_page_follows_a_job_to_its_end_and_steers_it(served, tmp_path):
    need_chromium()
    from playwright.sync_api import sync_playwright

    ctx, base = served
    job = kinds.plan_user_migration(ctx.engine, ctx.target("new"), write_users(tmp_path / "u.csv", USERS),
                                    source_app="new", chunk_size=10).report.job_id
    daily = schedules.add(ctx.engine, ctx.target("new"), command="broadcast", cron="0 9 * * *",
                          tz="Asia/Shanghai", params={"sender": "", "message": {"text": "hello"}})
    ctx.runtime  # noqa: B018  (configures the workers)
    artefacts = Path(os.environ.get("IMSHIFT_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw, in_process_workers(ctx.broker, threads=2):
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.set_default_timeout(20_000)
            page.goto(base + "/")
            page.fill("#token", "not the token")
            page.click("button[type=submit]")
            assert "not the server's IMSHIFT_API_TOKEN" in page.text_content(".error")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            card = page.locator(f'[data-job="{job}"]')
            card.wait_for()
            assert page.context.cookies()[0]["httpOnly"]
            assert card.locator("[data-role=done]").text_content().startswith(f"0 / {USERS}")
            plan = page.locator(f'[data-schedule="{daily}"]')  # listed, not yet fired
            assert plan.get_attribute("data-status") == "active"
            assert plan.locator("[data-role=when]").text_content() == "cron '0 9 * * *' in Asia/Shanghai"
            assert plan.locator("[data-role=next]").text_content() == (
                f"next fire {schedules.local(schedules.get(ctx.engine, daily).next_at, 'Asia/Shanghai')}")
            assert plan.locator("[data-role=last]").text_content() == "never fired"

            from imshift.jobs import control
            control.start(ctx.engine, ctx.broker, job)
            shown, widths = set(), set()

            def moving():  # the count and the bar's ok segment, both growing while it runs
                shown.add(card.locator("[data-role=done]").text_content())
                ok = card.locator(".bar .seg.ok")
                if ok.count():
                    widths.add(ok.get_attribute("style"))
                return (len(shown) >= 3 and len(widths) >= 2
                        and card.get_attribute("data-status") == "running")

            wait_for(moving)
            card.locator("[data-action=pause]").click()
            wait_for(lambda: card.get_attribute("data-status") == "paused")
            assert progress(ctx.engine, job).status == "paused"
            assert "paused" in card.locator("[data-role=note]").text_content()
            assert card.locator("[data-action=pause]").is_disabled()
            card.locator("[data-action=resume]").click()
            wait_for(lambda: card.get_attribute("data-status") == "finished", timeout=30)
            p = progress(ctx.engine, job)
            assert p.status == "finished" and p.counts == {"ok": USERS}
            wait_for(lambda: card.locator("[data-role=done]").text_content().startswith(
                f"{USERS} / {USERS} done (100%)"))
            assert card.locator('[data-count="ok"]').text_content() == f"ok {USERS}"
            assert card.locator(".bar .seg.ok").get_attribute("style") == "width:100.000%"
            assert card.locator("[data-role=status]").text_content() == "finished"
            shot = artefacts / "page-finished-job.png"
            card.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            print(f"screenshot of the finished job: {shot}")

            fired = fire(ctx, daily)  # the scheduler's step on a fake clock; the workers run its job
            last = plan.locator("[data-role=last]")
            wait_for(lambda: last.get_attribute("data-fire-job-status") == "finished")
            assert last.get_attribute("data-fire-job") == str(fired.job_id)
            assert last.text_content().endswith(f"job {fired.job_id} finished, 1 / 1 (ok 1)")
            fired_card = page.locator(f'section.job[data-job="{fired.job_id}"]')  # a job as any other
            wait_for(lambda: fired_card.get_attribute("data-status") == "finished")
            plan.screenshot(path=str(artefacts / "page-fired-schedule.png"))
            plan.locator("[data-action=pause]").click()
            wait_for(lambda: plan.get_attribute("data-status") == "paused")
            assert schedules.get(ctx.engine, daily).status == "paused"
            assert plan.locator("[data-action=pause]").is_disabled()
            plan.locator("[data-action=resume]").click()
            wait_for(lambda: plan.get_attribute("data-status") == "active")
            assert schedules.get(ctx.engine, daily).status == "active"
            assert plan.locator("[data-role=note]").text_content().startswith(f"schedule {daily} resumed")
        finally:
            browser.close()
    assert len(shown) >= 3 and len(widths) >= 2, (shown, widths)


def test_the_page_shows_a_runs_stages_and_which_one_runs(served, tmp_path):
    need_chromium()
    from playwright.sync_api import sync_playwright

    ctx, base = served
    users = write_users(tmp_path / "u.csv", 150, bad_rows={5: {"user_id": "no good"}})
    friends = tmp_path / "f.csv"
    friends.write_text("user_id,friend_id\n" + "".join(f"user_{i:06d},user_{i + 1:06d}\n" for i in range(
        10, 40)) + "no good,user_000009\n", encoding="utf-8")  # its account is refused: skipped
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, friends=friends, verify=True), chunk_size=10)
    name = f"R{plan.run_id}"
    ctx.runtime  # noqa: B018  (configures the workers)
    artefacts = Path(os.environ.get("IMSHIFT_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw, in_process_workers(ctx.broker, threads=2):
        browser = launch(pw)
        try:
            page = logged_in(browser, base)
            card = page.locator(f'[data-run="{name}"]')
            card.wait_for()
            stages = card.locator("li.stage")
            assert [stages.nth(i).get_attribute("data-stage") for i in range(stages.count())] == [
                "accounts", "friends", "verify"]
            accounts = card.locator('[data-stage="accounts"]')
            assert accounts.locator("[data-role=done]").text_content() == "1 / 150"  # refused at planning
            assert "current" in accounts.get_attribute("class")  # due next
            start = card.locator("[data-action=resume]")
            assert start.text_content() == "start" and card.get_attribute("data-status") == "planned"
            start.click()
            seen = []

            def running_stage():
                """The stage marked current while the run runs, and its own status."""
                current = card.locator("li.stage.current")
                if card.get_attribute("data-status") != "running" or current.count() != 1:
                    return None
                seen.append((current.get_attribute("data-stage"), current.get_attribute("data-status"),
                             accounts.locator("[data-role=done]").text_content()))
                return current.get_attribute("data-stage") == "accounts" and len(
                    {done for _, _, done in seen}) >= 2

            wait_for(running_stage)  # the accounts bar moves while it is the one marked
            card.screenshot(path=str(artefacts / "page-running-run.png"))
            assert ("accounts", "running") in {(stage, status) for stage, status, _ in seen}
            assert "running: accounts" in card.locator("[data-role=status]").text_content()
            wait_for(lambda: card.get_attribute("data-status") == "finished", timeout=60)
            p = run_control.run_progress(ctx.engine, plan.run_id)
            assert p.status == "finished"
            for stage, sp in p.stages:
                item = card.locator(f'[data-stage="{stage}"]')
                wait_for(lambda item=item: item.get_attribute("data-status") == "finished")
                assert item.locator("[data-role=done]").text_content() == f"{sp.completed} / {sp.total}"
                shown = {li.get_attribute("data-count"): li.text_content()
                         for li in item.locator("[data-count]").all()}
                assert shown == {k: f"{k} {n}" for k, n in sp.counts.items()}, stage
            assert p.stages[1][1].counts.get("skipped") == 1
            assert card.locator("li.stage.current").count() == 0
            assert card.locator("[data-action=pause]").is_disabled()
            shot = artefacts / "page-finished-run.png"
            card.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            print(f"screenshot of the finished run: {shot}")
        finally:
            browser.close()
