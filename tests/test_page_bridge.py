"""The live page's bridge card in a real browser (Debian's chromium driven
by Playwright): a migration run between two served NetEase sandboxes, a
bridge over it, clients sending on the old side and its feed POSTing each
message twice to the served API, which relays them; the card shows the
counts the report has, its failures as text, pause, resume and remove
steer the bridge (a 409's reason shown in its note), and its retry buttons,
shown while any failed or unknown, relay them again (unknown ones only once
a confirm is accepted)."""

import asyncio
import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from imshift.api import create_app
from sqlalchemy import update

from imshift.jobs import bridges
from imshift.models.tables import BridgeMessage
from imshift.vendors.feeds import FeedMessage
from imshift.workers.embedded import in_process_workers

from api_support import context
from test_page import TOKEN, launch, logged_in, need_chromium, wait_for

sys.path.append(str(Path(__file__).parent / "jobs"))  # bridge_support and its helpers, as tests/jobs sees them
from bridge_support import FAST, Sent, _fields, bridged, received_texts, send_all  # noqa: E402  (after the sys.path set-up above)

pytestmark = pytest.mark.loopback
SENT = 12


@contextlib.contextmanager
def serving(ctx):
    """The app on a real loopback port (a browser needs one), in a thread."""
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_page_shows_a_bridge_and_steers_it(tmp_path):
    need_chromium()
    from playwright.sync_api import sync_playwright

    db = f"sqlite:///{tmp_path}/imshift.db"
    artefacts = Path(os.environ.get("IMSHIFT_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with bridged(tmp_path, db, "netease", "netease", users=6) as b:
        ctx = context(db, apps={s.app: {"vendor": s.vendor, "rates": FAST, **_fields(s.box.config(s.url))}
                                for s in (b.old, b.new)})
        [bridge] = bridges.listed(ctx.engine)
        bid, run_id = bridge.id, b.run_id
        u = b.old.users
        # Two the relay cannot send, stored as a delivery would store them: a
        # sender the run never moved (held for the bridge's hold, 600 s) and
        # a kind the bridge does not carry (failed), its id markup to show as text.
        odd = "<img src=x onerror=window.pwned=1>"
        # And two as the relayer leaves them, for the retry buttons: one failed (its
        # vendor was down every attempt) and one unknown (it died after the send went out).
        again = [FeedMessage(msg_id=f"m-{state}", sender=u[2], to=u[3], group=False,
                             sent_at_ms=int(time.time() * 1000), kind="text", text=f"again {state}")
                 for state in ("failed", "unknown")]
        with ctx.engine.begin() as conn:
            bridges.receive(conn, bridge, "old", again)
            for m in again:
                state = m.msg_id.removeprefix("m-")
                conn.execute(update(BridgeMessage.__table__).where(BridgeMessage.__table__.c.msg_id == m.msg_id)
                             .values(state=state, code=state, message=f"left {state} for the test"))
        with ctx.engine.begin() as conn:
            bridges.receive(conn, bridge, "old", [
                FeedMessage(msg_id="m-ghost", sender="ghost", to=u[1], group=False,
                            sent_at_ms=int(time.time() * 1000), kind="text", text="hi"),
                FeedMessage(msg_id=odd, sender=u[0], to=u[1], group=False,
                            sent_at_ms=int(time.time() * 1000), kind="LOCATION")])
        ctx.runtime  # noqa: B018  (configures the in-process workers)
        with serving(ctx) as base, in_process_workers(ctx.broker, threads=2):
            b.old.feed_to(f"{base}/hooks/old", repeat=1.0)  # every delivery twice: one dropped each
            plan = [Sent("old", u[i % 6], u[(i + 1) % 6], False, f"old:c{i % 6}#{i // 6}") for i in range(SENT)]
            asyncio.run(send_all(b.old, plan, rate=50))
            forged = httpx.post(f"{base}/hooks/old", content=b'{"eventType":"1"}',
                                headers={"CurTime": str(int(time.time() * 1000)), "MD5": "0" * 32,
                                         "CheckSum": "0" * 40})
            assert forged.status_code == 401, forged.text
            [way] = wait_for(lambda: [w for w in bridges.report(ctx.engine, bid)["directions"]
                                      if w["relayed"] == SENT and w["failed"] == 2], timeout=30)
            assert (way["held"], way["duplicates"], way["refused"], way["pending"]) == (1, SENT, 1, 0), way
            with sync_playwright() as pw:  # its loop would refuse asyncio.run above
                see_and_steer(ctx, pw, base, b, bid, run_id, odd, artefacts)
        ctx.engine.dispose()


def see_and_steer(ctx, pw, base, b, bid, run_id, odd, artefacts):
    browser = launch(pw)
    try:
        page = logged_in(browser, base)
        card = page.locator(f'[data-bridge="{bid}"]')
        card.wait_for()
        row = card.locator('[data-way="old>new"]')
        cell = lambda k: row.locator(f'[data-count="{k}"]').text_content()  # noqa: E731  (a one-line reader of a cell)
        wait_for(lambda: cell("relayed") == str(SENT))
        assert card.locator("h2").text_content() == f"bridge B{bid}"
        assert card.locator(".head .muted").text_content() == f" old → new, run R{run_id}"
        assert card.get_attribute("data-status") == "active"
        shown = {k: cell(k) for k in ("relayed", "pending", "held", "failed", "unknown",
                                      "duplicates", "echoes", "refused")}
        assert shown == {"relayed": str(SENT), "pending": "0", "held": "1", "failed": "2",
                         "unknown": "1", "duplicates": str(SENT), "echoes": "0", "refused": "1"}
        assert row.locator("td").first.text_content() == "old → new"
        for p in ("p50", "p99"):
            lag = row.locator(f'[data-lag="{p}"]').text_content()
            assert lag.endswith(" ms") and int(lag[:-3].replace(",", "")) >= 0, lag
        failure = card.locator("[data-role=failures] td")
        assert [failure.nth(i).text_content() for i in range(3)] == ["old", odd, "rejected"]
        assert "cannot be relayed" in failure.nth(4).text_content()
        assert card.locator("img").count() == 0 and page.evaluate("window.pwned") is None
        assert page.locator("#bridges-empty").is_hidden()
        shot = artefacts / "page-bridge.png"
        card.screenshot(path=str(shot))
        assert shot.stat().st_size > 1000
        print(f"screenshot of the bridge: {shot}")

        note = card.locator("[data-role=note]")
        retry_failed, retry_unknown = (card.locator(f"[data-retry={k}]") for k in ("failed", "unknown"))
        assert retry_failed.is_visible() and retry_unknown.is_visible()
        retry_failed.click()  # the failed one goes again; the rejected one does not
        wait_for(lambda: note.text_content() == f"bridge B{bid}: 1 to relay again (rejected ones are not: "
                                                "the target said no)")
        wait_for(lambda: cell("relayed") == str(SENT + 1) and cell("failed") == "1")
        to = b.new.users[3]
        assert "again failed" in received_texts(b.new, [to])[to]
        page.once("dialog", lambda d: d.dismiss())
        retry_unknown.click()  # declined: nothing is asked of the server
        time.sleep(1.5)  # a poll or more: the count stays
        assert cell("unknown") == "1" and note.text_content().endswith("the target said no)")
        page.once("dialog", lambda d: d.accept())
        retry_unknown.click()
        wait_for(lambda: note.text_content() == f"bridge B{bid}: 1 to relay again")
        wait_for(lambda: cell("relayed") == str(SENT + 2) and cell("unknown") == "0")
        assert cell("failed") == "1"  # the rejected one: counted, but nothing to relay again
        assert retry_unknown.is_hidden() and retry_failed.is_hidden()
        assert bridges.report(ctx.engine, bid)["directions"][0]["unknown"] == 0

        assert card.locator("[data-action=resume]").is_disabled()
        card.locator("[data-action=pause]").click()
        wait_for(lambda: card.get_attribute("data-status") == "paused")
        assert bridges.listed(ctx.engine)[0].status == "paused"
        assert note.text_content() == f"bridge B{bid} is now paused"
        assert card.locator("[data-action=pause]").is_disabled()
        # A button pressed after someone else moved the bridge: the 409's reason, in the note.
        page.evaluate("([id, n]) => steerBridge(id, 'pause', document.querySelector(n))",
                      [bid, f'[data-bridge="{bid}"] [data-role=note]'])
        wait_for(lambda: "cannot pause" in note.text_content())
        assert note.text_content().startswith(f"bridge B{bid} is paused: it cannot pause")
        card.locator("[data-action=resume]").click()
        wait_for(lambda: card.get_attribute("data-status") == "active")
        assert bridges.listed(ctx.engine)[0].status == "active"
        page.once("dialog", lambda d: d.accept())
        card.locator("[data-action=remove]").click()
        wait_for(lambda: card.count() == 0)  # removed bridges are not listed
        assert bridges.listed(ctx.engine, removed=True)[0].status == "removed"
        assert page.locator("#bridges-empty").text_content().startswith(
            "No bridges: imshift bridge add --from OLD --to NEW --run R<n>")
    finally:
        browser.close()
