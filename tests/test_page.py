"""The live page in a real browser (Debian's chromium driven by Playwright)
while a job runs: log in, watch the bar and counts move, pause and resume
with the buttons, and see the finished state match the database."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from imshift.api import create_app
from imshift.jobs import kinds
from imshift.jobs.progress import progress
from imshift.workers.embedded import in_process_workers

from api_support import context, write_users

CHROMIUM = os.environ.get("IMSHIFT_CHROMIUM", "/usr/bin/chromium")
TOKEN = "page-token-for-tests-0123456789"
USERS = 240


@pytest.fixture
def served(tmp_path):
    """The app on a real loopback port (a browser needs one), in a thread."""
    ctx = context(f"sqlite:///{tmp_path}/p.db", chunk_size=10,
                  apps={"new": {"vendor": "netease", "sandbox": True, "rates": {"register": 60}}})
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


def test_the_page_follows_a_job_to_its_end_and_steers_it(served, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test does it as root)")
    from playwright.sync_api import sync_playwright

    ctx, base = served
    job = kinds.plan_user_migration(ctx.engine, ctx.target("new"), write_users(tmp_path / "u.csv", USERS),
                                    source_app="new", chunk_size=10).report.job_id
    ctx.runtime  # noqa: B018
    artefacts = Path(os.environ.get("IMSHIFT_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw, in_process_workers(ctx.broker, threads=2):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=20_000)
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

            from imshift.jobs import control
            control.start(ctx.engine, ctx.broker, job)
            shown = set()

            def moving():
                shown.add(card.locator("[data-role=done]").text_content())
                return len(shown) >= 3 and card.get_attribute("data-status") == "running"

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
        finally:
            browser.close()
    assert len(shown) >= 3, shown
