"""Benchmark 9, bridge: the cut-over bridge both ways between a RongCloud
sandbox ("old") and an OpenIM sandbox ("new"), each in its own process,
their feeds POSTing to a real `imshift serve` (embedded: it relays in its
own process), simulated clients sending on both sides at once.

Three phases, each on a fresh rig (sandboxes, users, migration run, bridge,
serve: tests/jobs/bridge_support.py `bridged`), so every counter is the
phase's own:

  200/s        N messages over 500 conversations (250 a side), half each way
  1000/s       the same at 1,000 messages/s
  200/s+mass   200/s while an `imshift send` job (a CLI process in embedded
               mode on the same database, so it shares the app's rate-limit
               schedule with the serve's relayer) sends one message to M
               recipients through the old app (RongCloud, 100 recipients a
               call), whose sandbox enforces send=R messages/s
               (`imshift sandbox --rate send=R`) and the app's rate is R too

OpenIM's webhooks report the bridge's own sends back (each must be dropped
as an echo); both feeds repeat a share of their deliveries (`--repeat`).
Figures per phase and direction:

  lag        source timestamp (the client's send, sent_at_ms) -> the bridge
             recorded the target's acceptance (bridge_messages.relayed_at):
             p50 / p99 / max over every message
  ack        feed answer time, server side (imshift_feed_ack_seconds from
             /metrics: the bucket bound holding p99, and the share under
             50 ms) and client side (each sandbox's /_sandbox/feed/stats
             answered_p99)
  lost/dup/ooo  read back from the target sandboxes' inboxes as a client
             reads them: expected messages missing, extra copies, and
             messages shown after a later one of their conversation
  over       the rate-limited sandbox's over-limit replies (mass phase)

    python -m bench bridge [--messages 10000] [--conversations 500]
                           [--rates 200,1000] [--mass 100000] [--mass-rate 1500]
                           [--repeat 0.05] [--phases 200,1000,mass] [--quick]
                           [--database sqlite|postgresql]

--quick is 1,000 messages and a 20,000-recipient mass send. --database
postgresql keeps the rig's state in a throwaway database on the local
PostgreSQL instead of one SQLite file that serve and the mass send share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, figures, percentile
from imshift.vendors.http import http_client
from testsupport import throwaway_database

sys.path[:0] = [str(ROOT / "tests" / "jobs"), str(ROOT / "tests")]  # bridge_support, as the tests see it

from bridge_support import Sent, bridged, received_texts, serving  # noqa: E402  (after the sys.path set-up above)

TARGET_LAG = 1.0  # seconds: p99 at 200/s, with and without the mass send
TARGET_ACK = 0.05  # seconds: feed answer p99
LANES = 32  # concurrent senders a side, each over its own conversations (their order kept)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench bridge", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000, help="messages a phase, both ways together")
    p.add_argument("--conversations", type=int, default=500, help="one-to-one conversations, half a side")
    p.add_argument("--rates", default="200,1000", help="messages/s of the phases without the mass send")
    p.add_argument("--mass", type=int, default=100_000, help="recipients of the mass send")
    p.add_argument("--mass-rate", type=float, default=1500.0,
                   help="send messages/s the old app allows (its sandbox enforces it)")
    p.add_argument("--mass-at", type=float, default=200.0, help="messages/s of the bridge beside it")
    p.add_argument("--repeat", type=float, default=0.05, help="share of feed deliveries sent twice")
    p.add_argument("--phases", default="rates,mass", help="rates, mass, or both (comma-separated)")
    p.add_argument("--drain", type=float, default=90.0, help="seconds to wait for the relays after the sends")
    p.add_argument("--keep", type=Path, default=None, help="keep the rigs' files (logs, database) here")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                   help="where serve, the relayer and the mass send keep their state (postgresql: a "
                        "throwaway database at IMSHIFT_TEST_POSTGRES or 127.0.0.1:5432)")
    p.add_argument("--quick", action="store_true", help="1,000 messages, a 20,000-recipient mass send")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.mass = 1_000, 20_000
    return args


# -- what the clients send --------------------------------------------------------------------

def plan_side(side, tag: str, convs: int, count: int, seed: int) -> list[Sent]:
    """`count` texts over `convs` conversations of `side` (user i -> i+1), at
    random; each text names its phase, side, conversation and place in it."""
    rnd = random.Random(seed)
    pairs = [(side.users[i], side.users[(i + 1) % len(side.users)]) for i in range(convs)]
    seen: dict[int, int] = defaultdict(int)
    plan = []
    for _ in range(count):
        c = rnd.randrange(convs)
        plan.append(Sent(side.app, pairs[c][0], pairs[c][1], False, f"{tag}:c{c}#{seen[c]}"))
        seen[c] += 1
    return plan


async def send_lanes(side, plan: list[Sent], rate: float) -> float:
    """The plan at `rate` a second from LANES concurrent clients, each taking
    whole conversations (so each conversation is sent in order); returns
    the seconds it took."""
    lanes: list[list[Sent]] = [[] for _ in range(LANES)]
    for m in plan:
        lanes[int(m.text.rpartition(":c")[2].partition("#")[0]) % LANES].append(m)
    start = time.monotonic()
    sent_at = {id(m): n / rate for n, m in enumerate(plan)}  # the plan's clock, shared by the lanes

    async def lane(items: list[Sent], http: httpx.AsyncClient) -> None:
        for m in items:
            wait = start + sent_at[id(m)] - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            reply = await http.post(f"{side.url}/_sandbox/client/send",
                                    json={"from": m.sender, "to": m.to, "group": False, "text": m.text})
            assert reply.status_code == 200, reply.text
            m.msg_id, m.at = str(reply.json()["msg_id"]), time.time()

    # Over aiohttp (vendors/http.py: httpx's own pool is slow with many requests in flight).
    async with http_client(max_connections=LANES) as http:
        await asyncio.gather(*(lane(items, http) for items in lanes))
    return time.monotonic() - start


# -- reading back -----------------------------------------------------------------------------

def check_inboxes(target, source, plan: list[Sent]) -> dict[str, int]:
    """Lost, duplicated and out-of-order messages of `plan` (sent on
    `source`) as `target`'s users' clients show them."""
    users = dict(zip(source.users, target.users, strict=True))
    want: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for m in plan:
        want[users[m.to]][m.text.partition("#")[0]].append(m.text)
    prefix = plan[0].text.partition(":c")[0] + ":c"
    got = received_texts(target, list(want))
    lost = dup = ooo = 0
    for user, convs in want.items():
        shown: dict[str, list[str]] = defaultdict(list)
        for text in got[user]:
            if text and text.startswith(prefix):
                shown[text.partition("#")[0]].append(text)
        for conv, texts in convs.items():
            seq = [int(t.rpartition("#")[2]) for t in shown.get(conv, [])]
            lost += len(set(range(len(texts))) - set(seq))
            dup += len(seq) - len(set(seq))
            highest = -1
            for n in seq:
                if n < highest:
                    ooo += 1
                highest = max(highest, n)
        dup += sum(len(v) for k, v in shown.items() if k not in convs)  # nothing else may show up
    return {"lost": lost, "dup": dup, "ooo": ooo}


def lags(db_url: str, sent: dict[str, float]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per sending app, sorted: relayed_at - sent_at_ms (the source
    sandbox's timestamp) for every relayed message; and relayed_at - the
    moment the client's send returned (`sent`: msg_id -> time), for those
    whose id the client got back. The sandboxes' timestamps are strictly
    increasing by at least 1 ms a message (vendors/sandbox/feed.py
    `sent_at_ms`), so above 1,000 messages/s at one sandbox (a mass send
    through it) they run ahead of the wall clock; the client's clock does not."""
    from sqlalchemy import create_engine, select

    from imshift.models.tables import BridgeMessage

    messages = BridgeMessage.__table__
    engine = create_engine(db_url)
    out: dict[str, list[float]] = defaultdict(list)
    client: dict[str, list[float]] = defaultdict(list)
    with engine.connect() as conn:
        for r in conn.execute(select(messages.c.from_app, messages.c.msg_id, messages.c.relayed_at,
                                     messages.c.sent_at_ms).where(messages.c.relayed_at.is_not(None))):
            out[r.from_app].append(r.relayed_at - r.sent_at_ms / 1000)
            if r.msg_id in sent:
                client[r.from_app].append(r.relayed_at - sent[r.msg_id])
    engine.dispose()
    return {app: sorted(v) for app, v in out.items()}, {app: sorted(v) for app, v in client.items()}


def stages(db_url: str) -> dict[str, dict[str, Any]]:
    """Per sending app, where the lag went, p99 each: the source's timestamp
    -> stored (the feed and our ingest), stored -> let go by the limiter
    (the relayer's queue: the settle window, claims, the rate), let go ->
    the target's acceptance recorded (the call and its record); and the
    database's view of order: per conversation in relay order, messages
    relayed after a later one of theirs, split by why. `late`: stored after
    that later one's settle window had passed (it was due and could go at
    once: cannot be put back, docs/failure-modes.md); `tie`: both had the
    same source millisecond, so the feed's arrival order was all there was;
    `bug`: neither (the relayer broke the order it could see)."""
    from sqlalchemy import create_engine, select

    from imshift.models.tables import Bridge, BridgeMessage

    messages = BridgeMessage.__table__
    engine = create_engine(db_url)
    with engine.connect() as conn:
        settle = conn.execute(select(Bridge.__table__.c.settle)).scalar_one()
        rows = conn.execute(select(messages.c.from_app, messages.c.conversation, messages.c.content,
                                   messages.c.sent_at_ms, messages.c.received_at, messages.c.sent_at,
                                   messages.c.relayed_at)
                            .where(messages.c.relayed_at.is_not(None))).all()
    engine.dispose()
    out: dict[str, dict[str, Any]] = {}
    for app in sorted({r.from_app for r in rows}):
        mine = [r for r in rows if r.from_app == app]
        gone = {id(r): r.sent_at or r.relayed_at for r in mine}  # repeat-safe sends carry no mark
        order = {"late": 0, "tie": 0, "bug": 0}
        convs: dict[str, list[Any]] = defaultdict(list)
        for r in mine:
            convs[r.conversation].append(r)
        for conv in convs.values():
            conv.sort(key=lambda r: r.relayed_at)
            top = None
            for r in conv:
                n = int(str((r.content or {}).get("text", "#-1")).rpartition("#")[2])
                if top is not None and n < top[0]:
                    later = top[1]
                    order["late" if r.received_at > later.received_at + settle else
                          "tie" if r.sent_at_ms == later.sent_at_ms else "bug"] += 1
                if top is None or n > top[0]:
                    top = (n, r)
        out[app] = {"stored": percentile(sorted(r.received_at - r.sent_at_ms / 1000 for r in mine), 0.99),
                    "queued": percentile(sorted(gone[id(r)] - r.received_at for r in mine), 0.99),
                    "call": percentile(sorted(r.relayed_at - gone[id(r)] for r in mine), 0.99),
                    "order": order}
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (None: this one, all its threads)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy so far (/proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


ACK_BUCKET = re.compile(r'^imshift_feed_ack_seconds_bucket\{.*le="([^"]+)".*\}\s+(\S+)$')


def ack_histogram(server_url: str) -> list[tuple[float, float]]:
    """(bound, cumulative count) of imshift_feed_ack_seconds, from /metrics."""
    text = httpx.get(f"{server_url}/metrics", timeout=10).text
    found: dict[float, float] = defaultdict(float)
    for line in text.splitlines():
        hit = ACK_BUCKET.match(line)
        if hit:
            found[float(hit.group(1))] += float(hit.group(2))
    return sorted(found.items())


def ack_figures(buckets: list[tuple[float, float]]) -> tuple[float, float, int]:
    """(bucket bound holding p99, share answered within TARGET_ACK, count)."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan"), float("nan"), 0
    p99 = next(bound for bound, n in buckets if n >= 0.99 * total)
    within = next((n for bound, n in buckets if bound >= TARGET_ACK - 1e-9), total)
    return p99, within / total, int(total)


def bridge_report(server_url: str) -> dict[str, Any]:
    return httpx.get(f"{server_url}/api/bridges/1", timeout=30).json()


def feed_stats(side) -> dict[str, Any]:
    return httpx.get(f"{side.url}/_sandbox/feed/stats", timeout=10).json()


def sandbox_stats(side) -> dict[str, Any]:
    return httpx.get(f"{side.url}/_sandbox/stats", timeout=10).json()


def drain(b, counts: dict[str, int], seconds: float) -> dict[str, Any]:
    """Until every message of each direction is settled (relayed, failed or
    unknown) and the feeds have nothing pending; the last report."""
    deadline = time.monotonic() + seconds
    while True:
        report = bridge_report(b.server_url)
        settled = all(w["relayed"] + w["failed"] + w["unknown"] >= counts[w["from_app"]]
                      for w in report["directions"])
        pending = feed_stats(b.old)["pending"] + feed_stats(b.new)["pending"]
        if (settled and not pending) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


# -- a mass send beside the bridge ------------------------------------------------------------

def start_mass_send(b, tmp: Path, recipients: int, env: dict[str, str]) -> subprocess.Popen:
    to = tmp / "mass-recipients.txt"
    to.write_text("".join(f"mass_{i:07d}\n" for i in range(recipients)), encoding="utf-8")
    log = (tmp / "mass-send.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "imshift.cli", "send", "--app", "old",
                             "--sender", b.old.users[0], "--to", str(to), "--text", "mass send"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def mass_progress(db_url: str) -> tuple[int, float | None, float | None, str]:
    """The send job's recipients done, started_at, finished_at, status."""
    from sqlalchemy import create_engine, func, select

    from imshift.models.tables import Item, Job

    jobs, items = Job.__table__, Item.__table__
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            job = conn.execute(select(jobs).where(jobs.c.kind == "send").order_by(jobs.c.id.desc())).first()
            if job is None:
                return 0, None, None, "none"
            done = conn.execute(select(func.count()).where(items.c.job_id == job.id,
                                                           items.c.state == "ok")).scalar_one()
            return done, job.started_at, job.finished_at, job.status
    finally:
        engine.dispose()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- one phase --------------------------------------------------------------------------------

def phase(args: argparse.Namespace, tmp: Path, name: str, rate: float, mass: int = 0) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    if args.database == "postgresql":  # a throwaway database on the local PostgreSQL
        with throwaway_database(prefix="imshift_bench") as db:
            return _phase(args, tmp, name, rate, mass, db)
    return _phase(args, tmp, name, rate, mass, f"sqlite:///{tmp}/imshift.db")


def _phase(args: argparse.Namespace, tmp: Path, name: str, rate: float, mass: int, db: str) -> dict[str, Any]:
    a_side = args.conversations // 2
    limits = {"old": {"send": args.mass_rate}} if mass else None
    began = time.monotonic()
    with bridged(tmp, db, "rongcloud", "openim", users=a_side, both_ways=True,
                 sandbox_rates=limits) as b:
        env = dict(b.env)
        if mass:  # the old app's send rate is what its sandbox allows: the relayer and the job share it
            rates = json.loads(env["IMSHIFT_APPS__OLD__RATES"])
            env["IMSHIFT_APPS__OLD__RATES"] = json.dumps({**rates, "send": args.mass_rate})
        b.env = env
        with serving(b, tmp / "serve.log", extra_env=env) as server:
            setup = time.monotonic() - began
            for side in (b.old, b.new):
                side.feed_to(side.hook(b.server_url), repeat=args.repeat)
            half = args.messages // 2
            plans = {"old": plan_side(b.old, f"{name}-old", a_side, half, seed=1),
                     "new": plan_side(b.new, f"{name}-new", a_side, args.messages - half, seed=2)}
            sender = None
            mass_before = 0
            if mass:
                sender = start_mass_send(b, tmp, mass, env)
                deadline = time.monotonic() + 60
                while sandbox_stats(b.old)["calls"].get("send", 0) < 3:  # its calls are going out
                    assert sender.poll() is None and time.monotonic() < deadline, \
                        (tmp / "mass-send.log").read_text()[-3000:]
                    time.sleep(0.1)
                mass_before = mass_progress(db)[0]

            async def both() -> tuple[float, float]:
                return await asyncio.gather(send_lanes(b.old, plans["old"], rate / 2),
                                            send_lanes(b.new, plans["new"], rate / 2))

            pids: dict[str, int | None] = {"bench clients": None, "old sandbox": b.old.pid, "new sandbox": b.new.pid,
                    "imshift serve": server.pid}
            if sender is not None:
                pids["mass send"] = sender.pid
            cpu_before = {k: cpu_seconds(p) for k, p in pids.items()}
            busy_before = machine_busy()
            send_began = time.time()
            took = asyncio.run(both())
            sends_ended = time.time()
            mass_during = mass_progress(db)[0] - mass_before if mass else 0
            report = drain(b, {"old": len(plans["old"]), "new": len(plans["new"])}, args.drain)
            drained = time.time() - sends_ended
            cpu = {k: cpu_seconds(p) - cpu_before[k] for k, p in pids.items()}
            busy = machine_busy() - busy_before
            wall = time.time() - send_began
            ack = ack_figures(ack_histogram(b.server_url))
            feeds = {"old": feed_stats(b.old), "new": feed_stats(b.new)}
            boxes = {"old": sandbox_stats(b.old), "new": sandbox_stats(b.new)}
            checks = {"old": check_inboxes(b.new, b.old, plans["old"]),
                      "new": check_inboxes(b.old, b.new, plans["new"])}
            mass_state = None
            if sender is not None:
                done, started, finished, status = mass_progress(db)
                stop(sender)
                boxes["old"] = sandbox_stats(b.old)
                mass_state = {"done": done, "during": mass_during, "status": status,
                              "running_through": finished is None or finished >= sends_ended,
                              "started": started, "finished": finished, "send_began": send_began}
        lag, client_lag = lags(db, {m.msg_id: m.at for plan in plans.values() for m in plan})
        where = stages(db)
    return {"cpu": cpu, "busy": busy, "wall": wall, "stages": where, "client_lag": client_lag, "sent": args.messages, "name": name, "rate": rate, "setup": setup, "took": took, "drained": drained,
            "report": report, "lag": lag, "ack": ack, "feeds": feeds, "boxes": boxes,
            "checks": checks, "mass": mass_state, "mass_n": mass}


def describe(r: dict[str, Any]) -> dict[str, float]:
    """Print a phase's figures; the ones the key=value line takes."""
    out: dict[str, float] = {}
    print(f"\n== {r['name']}: {r['rate']:g} messages/s asked, sends took {r['took'][0]:.1f} / "
          f"{r['took'][1]:.1f} s (old / new side; {r['sent'] / max(r['took']):.0f} messages/s reached), relays settled {r['drained']:.1f} s after the "
          f"last send; rig set up in {r['setup']:.0f} s", flush=True)
    for way in r["report"]["directions"]:
        src = way["from_app"]
        values = r["lag"].get(src, [])
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        mx = values[-1] if values else float("nan")
        c = r["checks"][src]
        cl = r["client_lag"].get(src, [])
        print(f"  {way['from_app']} -> {way['to_app']}: relayed {way['relayed']}, failed {way['failed']}, "
              f"unknown {way['unknown']}, held {way['held']}, pending {way['pending']}; duplicates "
              f"dropped {way['duplicates']}, echoes dropped {way['echoes']}, refused {way['refused']}; "
              f"lag p50 {p50:.3f} s p99 {p99:.3f} s max {mx:.3f} s (from the client's clock, {len(cl)} matched: p50 "
              f"{percentile(cl, 0.5):.3f} s p99 {percentile(cl, 0.99):.3f} s); inboxes: lost {c['lost']}, "
              f"duplicated {c['dup']}, out of order {c['ooo']}", flush=True)
        st = r["stages"].get(src)
        if st:
            o = st["order"]
            print(f"    where (p99): source -> stored {st['stored']:.3f} s, stored -> let go {st['queued']:.3f} s "
                  f"(the settle window included), let go -> accepted {st['call']:.3f} s; relayed after a later "
                  f"one, by the database: {o['late']} stored after its settle window (late from the feed), {o['tie']} "
                  f"in the same source millisecond, {o['bug']} otherwise (a bug)", flush=True)
            out.update({f"{src}_ooo_late": o["late"], f"{src}_ooo_tie": o["tie"], f"{src}_ooo_bug": o["bug"]})
        out.update({f"{src}_p50": p50, f"{src}_p99": p99, f"{src}_cp99": percentile(cl, 0.99), f"{src}_lost": c["lost"],
                    f"{src}_dup": c["dup"], f"{src}_ooo": c["ooo"]})
    p99, within, n = r["ack"]
    client = {k: f["answered_p99"] for k, f in r["feeds"].items()}
    print(f"  feed answers: server p99 <= {p99:g} s ({within:.1%} of {n} within "
          f"{TARGET_ACK * 1000:.0f} ms); sandbox-side answered p50/p99 old "
          f"{r['feeds']['old']['answered_p50'] or 0:.4f}/{client['old'] or 0:.4f} s, new "
          f"{r['feeds']['new']['answered_p50'] or 0:.4f}/{client['new'] or 0:.4f} s; deliveries "
          f"{r['feeds']['old'].get('sent', 0)} / {r['feeds']['new'].get('sent', 0)}, repeated "
          f"{r['feeds']['old'].get('repeated', 0)} / {r['feeds']['new'].get('repeated', 0)}, "
          f"failed {r['feeds']['old'].get('failed', 0)} / {r['feeds']['new'].get('failed', 0)}", flush=True)
    out.update(sent_per_s=r["sent"] / max(r["took"]), ack_p99=p99, ack_within=within,
               feed_failed=sum(f.get("failed", 0) for f in r["feeds"].values()),
               ack_client_p99=max((v for v in client.values() if v is not None), default=float("nan")))
    reached = r["sent"] / max(r["took"])
    cores = os.cpu_count() or 1
    wall = r["wall"]
    used = sum(v for k, v in r["cpu"].items() if k != "mass send")  # the bridge's own rig
    each = ", ".join(f"{k} {v:.1f} s ({v / wall:.0%} of a core, {1000 * v / r['sent']:.2f} ms a message)"
                     for k, v in r["cpu"].items())
    busy = r["busy"] / (wall * cores)
    print(f"  CPU from the first send to the relays settled ({wall:.1f} s, {cores} cores): {each}; the "
          f"machine's cores were {busy:.0%} busy, other work included", flush=True)
    if reached < 0.95 * r["rate"]:
        print(f"  SHORT: the load generator fell short: its clients reached {reached:.0f} of {r['rate']:g} "
              f"messages/s asked (each send waits for its sandbox's answer, and the sandboxes serve the "
              f"feeds and the relays too); at {1000 * used / r['sent']:.1f} ms of CPU a message end to end, "
              f"{cores} free cores carry about {cores * r['sent'] / used:.0f} messages/s"
              + ("; the cores were saturated" if busy > 0.9 else ""), flush=True)
    else:
        slow = {src: out[f"{src}_p99"] for src in ("old", "new") if out.get(f"{src}_p99", 0) >= TARGET_LAG}
        if slow:
            print(f"  SHORT: the clients reached the asked rate, imshift did not keep up: lag p99 "
                  f"{', '.join(f'{k} {v:.2f} s' for k, v in slow.items())} (where: the lines above)", flush=True)
    out.update(cpu_ms=1000 * used / r["sent"], serve_cpu_ms=1000 * r["cpu"]["imshift serve"] / r["sent"],
               busy=busy, reached_share=reached / r["rate"])
    if r["mass"]:
        m, box = r["mass"], r["boxes"]["old"]
        over = box["over_limit"].get("send", 0)
        print(f"  mass send into old (RongCloud, send limit enforced by its sandbox): {m['done']} of "
              f"{r['mass_n']} recipients ok when the relays settled ({m['during']} while the clients "
              f"sent), job {m['status']}, ran through the clients' sends: {m['running_through']}; "
              f"sandbox over-limit replies {over}, busiest second {box['max_per_second'].get('send', 0)}"
              f" messages", flush=True)
        out.update(over=over, mass_during=m["during"], mass_through=int(bool(m["running_through"])))
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    rates = [float(x) for x in args.rates.split(",") if x]
    wanted = set(args.phases.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="imshift-bench-bridge-") as tmpdir:
        base = args.keep or Path(tmpdir)
        os.environ["IMSHIFT_CONFIG"] = str(base / "no-config.toml")
        print(f"bridge RongCloud <-> OpenIM both ways: {args.messages} messages a phase over "
              f"{args.conversations} conversations, feeds repeating {args.repeat:.0%}; load average "
              f"{os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
        try:
            if "rates" in wanted:
                for rate in rates:
                    results.append(describe(phase(args, base / f"r{rate:g}", f"r{rate:g}", rate)))
                    print(f"  load average: {os.getloadavg()[0]:.2f}", flush=True)
            if "mass" in wanted:
                results.append(describe(phase(args, base / "mass", "mass", args.mass_at, args.mass)))
                print(f"  load average: {os.getloadavg()[0]:.2f}", flush=True)
        except KeyboardInterrupt:
            print("interrupted: its sandboxes, serve and send are stopped", flush=True)
            return 130
    names = ([f"r{r:g}" for r in rates] if "rates" in wanted else []) + (["mass"] if "mass" in wanted else [])
    fig: dict[str, Any] = {"messages": args.messages}
    for name, r in zip(names, results, strict=True):
        for k, v in r.items():
            fig[f"{name}_{k}"] = v
    if "r200" in names and "mass" in names:
        for src in ("old", "new"):
            base_p99 = fig.get(f"r200_{src}_p99")
            fig[f"mass_vs_r200_{src}_p99"] = (fig[f"mass_{src}_p99"] / base_p99) if base_p99 else float("nan")
    bad = sum(fig.get(f"{n}_{s}_{k}", 0) for n in names for s in ("old", "new") for k in ("lost", "dup", "ooo"))
    met_lag = all(fig.get(f"{n}_{s}_p99", 0) < TARGET_LAG for n in names if n in ("r200", "mass")
                  for s in ("old", "new"))
    met_ack = all(fig.get(f"{n}_ack_p99", 0) <= TARGET_ACK for n in names)
    fig.update(wrong=bad, lag_met=int(met_lag), ack_met=int(met_ack), over=fig.get("mass_over", 0),
               load=os.getloadavg()[0])
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    figures(**fig)
    return 0 if bad == 0 and met_lag and fig["over"] == 0 else 1
