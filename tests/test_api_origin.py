"""Another page on the same host must not steer the HTTP face (issue 21,
item 16): a page served from another port is the same *site*, so the
page's SameSite=Strict cookie goes with its form posts and fetches. A change
whose Origin (or Referer) is not the server's own is refused; one with
neither (curl, scripts) is not a browser's and stays allowed; the page is
not framed. Driven in real Chromium from a page on another port. Also the
paging bounds: `?before=` past a 32-bit id is a 422, not PostgreSQL's
"integer out of range" as a 503."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import uvicorn

from imshift.api import create_app
from imshift.jobs import schedules

from api_support import api, context  # noqa: F401  (pytest fixtures, used by name)
from test_page import TOKEN, launch, need_chromium, wait_for

NEW = {"vendor": "netease", "sandbox": True}
HELLO = {"sender": "", "message": {"text": "hello"}}


def daily(ctx):
    return schedules.add(ctx.engine, ctx.target("new"), command="broadcast", cron="0 9 * * *",
                         tz="Asia/Shanghai", params=HELLO)


def test_a_change_from_another_origin_is_refused_and_one_from_none_or_its_own_is_not(tmp_path, api):
    ctx = context(f"sqlite:///{tmp_path}/o.db", apps={"new": NEW})
    plan = daily(ctx)
    http = api(ctx)
    pause = f"/api/schedules/{plan}/pause"
    for headers in ({"Origin": "http://imshift.test:8001"}, {"Origin": "null"},
                    {"Referer": "http://127.0.0.1:9000/attack.html"},
                    {"Origin": "http://evil.test", "Referer": "http://imshift.test/"}):
        refused = http.post(pause, headers=headers)
        assert refused.status_code == 403, (headers, refused.text)
        assert refused.json()["detail"].startswith("refused: a change sent from another page"), refused.text
        assert schedules.get(ctx.engine, plan).status == "active"
    assert http.post("/logout", headers={"Origin": "http://127.0.0.1:9000"}).status_code == 403
    assert http.post("/login", data={"token": TOKEN}, headers={"Origin": "http://x.test"}).status_code == 403
    # reading stays open to any page's links; its own page and scripts change state
    assert http.get(f"/api/schedules/{plan}", headers={"Origin": "http://evil.test"}).status_code == 200
    assert http.post(pause, headers={"Origin": "http://imshift.test"}).status_code == 200
    assert schedules.get(ctx.engine, plan).status == "paused"
    resumed = http.post(f"/api/schedules/{plan}/resume", headers={"Referer": "http://imshift.test/?x=1"})
    assert resumed.status_code == 200 and schedules.get(ctx.engine, plan).status == "active"
    assert http.post(pause).status_code == 200  # no Origin, no Referer: curl with the bearer token


def test_the_page_and_its_login_cannot_be_framed(tmp_path, api):
    ctx = context(f"sqlite:///{tmp_path}/f.db", apps={"new": NEW})
    http = api(ctx, token=TOKEN)
    for response in (http.get("/"), http.get("/", headers={"Cookie": f"imshift_token={TOKEN}"})):
        assert response.status_code == 200
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_paging_past_a_32_bit_id_is_a_422(database_url, api):
    ctx = context(database_url, apps={"new": NEW})
    daily(ctx)
    http = api(ctx)
    for path in ("/api/jobs", "/api/runs", "/api/schedules"):
        too_far = http.get(path, params={"before": 2**31})
        assert too_far.status_code == 422, (path, too_far.text)
        assert http.get(path, params={"before": 2**31 - 1}).status_code == 200
    assert http.get("/api/runs/R2147483648").status_code == 404
    assert http.get("/api/jobs/1/items", params={"after": 2**31}).status_code == 422


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{base}/api/schedules/{paused}/pause" target="sink"></form>
<iframe name="sink"></iframe>
<iframe id="framed" src="{base}/"></iframe>
<script>
fetch("{base}/api/schedules/{removed}/remove", {{method: "POST", mode: "no-cors", credentials: "include"}})
  .finally(() => {{ document.getElementById("f").submit(); document.title = "sent"; }});
</script></body></html>"""


@pytest.fixture
def attacker():
    """A page on another port of 127.0.0.1 (the same site as the server)."""
    pages = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield pages, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_on_another_port_cannot_steer_a_logged_in_browser(tmp_path, attacker):
    need_chromium()
    from playwright.sync_api import sync_playwright

    ctx = context(f"sqlite:///{tmp_path}/b.db", apps={"new": NEW})
    paused, removed = daily(ctx), daily(ctx)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx, TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=15)
    base = f"http://127.0.0.1:{port}"
    pages, evil = attacker
    pages["/attack.html"] = ATTACK.format(base=base, paused=paused, removed=removed)
    refusals = []
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                page.goto(f"{base}/?token={TOKEN}")  # logged in: the cookie is set
                assert page.context.cookies()[0]["sameSite"] == "Strict"
                page.on("response", lambda r: r.url.startswith(base + "/api/schedules/") and refusals.append(
                    (r.url, r.status)))
                page.goto(f"{evil}/attack.html")
                wait_for(lambda: page.title() == "sent")
                # the form's post answers into the sink frame; then let any late request land
                wait_for(lambda: any(url.endswith("/pause") for url, _ in refusals))
                time.sleep(0.5)
                framed = [f.url for f in page.frames if f.name != "sink" and f != page.main_frame]
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert schedules.get(ctx.engine, paused).status == "active"
    assert schedules.get(ctx.engine, removed).status == "active"
    assert sorted(refusals) == sorted([(f"{base}/api/schedules/{paused}/pause", 403),
                                       (f"{base}/api/schedules/{removed}/remove", 403)]), refusals
    assert framed and not any(url.startswith(base) for url in framed), framed  # blocked: an error page
