"""The demo's bridge: after the run, a bridge both ways over it (jobs/bridges.py),
the app `imshift serve` runs (imshift/api.py) served on loopback in a thread,
both built-in sandboxes' feeds pointed at its /hooks/APP, and a few users on
each vendor sending from their apps: each message is read back from the
other vendor's inboxes, then `imshift bridge status`'s figures are printed.

The relay runs on the demo's in-process workers, as the embedded `imshift
serve` relays in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
from rich.console import Console

from imshift.context import Context
from imshift.jobs import bridges, run_control
from imshift.vendors.vocabulary import Group, Profile

from .api import create_app

WAIT = 10.0  # seconds a message may take to cross (it takes well under one)
STEP = 0.05  # seconds between looks at an inbox
CALL = 10.0  # seconds one call to an in-process sandbox may take


@dataclass
class Crossing:
    """One message a client of `app` (vendor `where`) sends from `sender` to a
    user or group `to`; on `there` it must show as from `seen_from` to
    `seen_to`, in each of the `readers`' inboxes."""

    app: str
    where: str
    sender: str
    to: str
    group: bool
    text: str
    there: str
    seen_from: str
    seen_to: str
    readers: list[str]


def run_bridge(ctx: Context, source: str, target: str, run_id: int, friends: Path, groups: Path,
               console: Console) -> None:
    """Bridge the run both ways and show messages crossing; any failure is one line."""
    try:
        _run(ctx, source, target, run_id, friends, groups, console)
    except Exception as exc:  # a demo step that failed: say so plainly and go on to the end
        console.print(f"[red]the bridge part stopped:[/red] {type(exc).__name__}: {exc}", highlight=False)


def _run(ctx: Context, source: str, target: str, run_id: int, friends: Path, groups: Path,
         console: Console) -> None:
    ids = {(kind, s): t for kind, s, t in run_control.id_map_rows(ctx.engine, run_id)}
    with friends.open(encoding="utf-8") as f:
        a, b = next(csv.DictReader(f)).values()  # the export's first friend pair
    with groups.open(encoding="utf-8") as f:
        team = json.loads(f.readline())  # its first (smallest) group
    people = [team["owner"], *team["members"]]
    for user in {a, b, *people}:
        if ("user", user) not in ids:
            raise RuntimeError(f"{user} is not in R{run_id}'s id map")
    new = {u: ids[("user", u)] for u in {a, b, *people}}
    old_box, new_box = ctx.sandbox(source), ctx.sandbox(target)
    loop = _workers_loop()

    # The export came from RongCloud, where these users and their group still are;
    # the demo's RongCloud sandbox starts empty, so they are made there first.
    async def old_accounts() -> None:
        client = ctx.client(source)
        try:
            results = await client.register_users([Profile(u, u) for u in sorted(new)])
            made = await client.create_group(Group(team["group_id"], team["name"], team["owner"],
                                                   team["members"]))
        finally:
            await client.http.aclose()
        bad = [r for r in [*results, made] if not r.succeeded]
        if bad:
            raise RuntimeError(f"the RongCloud sandbox refused {bad[0]}")

    _on(loop, old_accounts())
    bid = bridges.add(ctx.engine, source_app=source, app=target, run_id=run_id, both_ways=True,
                      hold=600.0, settle=0.3)  # `bridge add`'s defaults
    console.print(f"\n[bold]bridge B{bid}[/bold] over R{run_id}, both ways (`imshift bridge add "
                  f"--from {source} --to {target} --run R{run_id} --both-ways`): the users who "
                  "have moved to Maxim keep talking with those still on RongCloud", highlight=False)
    with _serving(ctx) as url:
        for app, box in ((source, old_box), (target, new_box)):  # Maxim's signature is in its config
            _on(loop, _post(box, "/_sandbox/feed", {"url": f"{url}/hooks/{app}"}))
        console.print(f"  imshift's app on {url} in this process (as `imshift serve` runs it), with "
                      f"the relayer on the demo's workers; feeds at {url}/hooks/{source} and "
                      f"/hooks/{target}", highlight=False)
        console.print("  each message as its sender's app sent it, then as the other vendor's "
                      "client shows it (each vendor's own ids for the same people):", highlight=False)
        g, new_g = team["group_id"], ids[("group", team["group_id"])]
        crossings = [
            Crossing(source, "RongCloud", a, b, False, "你好! are you on the new app yet? 👋",
                     "Maxim", new[a], new[b], [new[b]]),
            Crossing(target, "Maxim", new[b], new[a], False, "yes, since today. Still on RongCloud?",
                     "RongCloud", b, a, [a]),
            Crossing(source, "RongCloud", people[0], g, True, "team: RongCloud still works for me",
                     "Maxim", new[people[0]], new_g, [new[p] for p in people[1:]]),
            Crossing(target, "Maxim", new[people[1]], new_g, True, "and Maxim for me 🚀",
                     "RongCloud", people[1], g, [p for p in people if p != people[1]]),
        ]
        for c in crossings:
            box, other = (old_box, new_box) if c.app == source else (new_box, old_box)
            started = time.monotonic()
            _on(loop, _post(box, "/_sandbox/client/send",
                            {"from": c.sender, "to": c.to, "group": c.group, "text": c.text}))
            while not all(_on(loop, _seen(other, r, c.seen_from, c.text)) for r in c.readers):
                if time.monotonic() - started > WAIT:
                    raise RuntimeError(f"{c.text!r} did not reach {c.there} within {WAIT:g} s; "
                                       f"{_failures(ctx, bid)}")
                time.sleep(STEP)
            group = "group " if c.group else ""
            console.print(f"  sent on {c.where + ':':<10}  {c.sender} -> {group}{c.to}: {c.text!r}\n"
                          f"  shown on {c.there + ':':<10} {c.seen_from} -> {group}{c.seen_to}, "
                          f"{time.monotonic() - started:.1f} s later"
                          + (f" (for {', '.join(c.readers)})" if c.group else ""), highlight=False)
        # Maxim reports the bridge's own sends on its feed too: let those arrive (each is dropped).
        deadline = time.monotonic() + 3
        while (old_box.feed.pending or new_box.feed.pending) and time.monotonic() < deadline:
            time.sleep(STEP)
    report = bridges.report(ctx.engine, bid)
    console.print(f"`imshift bridge status B{bid}`: {report['status']}", highlight=False)
    for w in report["directions"]:
        console.print(f"  {w['from']} -> {w['to']}: {w['relayed']} relayed, {w['pending']} pending, "
                      f"{w['failed']} failed; lag p50 {_ms(w['lag_p50'])}, p99 {_ms(w['lag_p99'])}"
                      + (f"; {w['echoes']} echoes dropped (its feed also reports what the bridge "
                         "sent into it)" if w["echoes"] else ""), highlight=False)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _failures(ctx: Context, bid: int) -> str:
    failed = bridges.report(ctx.engine, bid)["last_failures"]
    return f"the bridge's last failure: {failed[0]['code']} {failed[0]['message']}" if failed \
        else "the bridge recorded no failure: it is still pending"


# -- where it runs ----------------------------------------------------------------------------

def _workers_loop() -> asyncio.AbstractEventLoop:
    """The in-process workers' event loop, where the relayer sends into the
    sandboxes. A sandbox's feed keeps one HTTP client, and an httpx client
    belongs to one loop: the clients' sends (whose deliveries it posts) run
    there too, as do the inbox reads, so nothing reads a sandbox mid-send."""
    from dramatiq.asyncio import get_event_loop_thread

    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the in-process workers are not running")
    return thread.loop


def _on(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Run `coro` on the workers' loop and wait for it (bounded)."""
    try:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL)
    except TimeoutError:
        raise RuntimeError(f"a call to a sandbox took over {CALL:g} s") from None


async def _post(box: Any, path: str, body: dict[str, Any]) -> None:
    transport = httpx.ASGITransport(app=box.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        reply = await http.post(path, json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"{path}: {reply.status_code} {reply.text[:200]}")


async def _seen(box: Any, user: str, sender: str, text: str) -> bool:
    return any(m.get("text") == text and str(m.get("from")) == sender for m in box.inbox_view(user))


@contextlib.contextmanager
def _serving(ctx: Context) -> Iterator[str]:
    """create_app(ctx) under uvicorn on a free loopback port, in a thread (as
    vendors/sandbox/serve.py serves a sandbox); yields its base URL."""
    import uvicorn

    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0, log_config=None,
                            log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="imshift-demo-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("imshift's app did not start on a loopback port")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
