"""The bridge while things die: messages flow from the old vendor's sandbox
(its feed POSTing each to `imshift serve`, retrying what is not answered
2xx) while the process that receives the feed, the worker processes that
relay, Redis or PostgreSQL are killed or restarted. In the end every message
the clients sent is stored once and reaches the other side once, in its
conversation's order: 0 lost, 0 duplicated. Where the target does not drop
repeated sends (RongCloud), a relay in flight when its relayer dies ends
`unknown` and is never sent again: it may be missing, never doubled.

Each kill lands while a relay is in flight (a message `claimed` with its
send mark written, the target sandbox adding latency to every call), so the
recovery path is the one exercised. A dead relayer's turn lapses after
relay.TURN (15 s); the sweeper (stale_after 2 s here) then wakes the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from imshift.models.db import normalise_url
from imshift.models.tables import BridgeMessage
from testsupport import PostgresCluster, RedisServer, postgres_bin

from bridge_support import (Sent, bridged, free_port, received_texts, send_all, serving, wait_for,
                            wait_for_workers, worker_processes, working)
from helpers import kill

pytestmark = pytest.mark.loopback

messages = BridgeMessage.__table__
COUNT, PAIRS, RATE = 400, 20, 100  # messages, one-to-one conversations, messages a second
# Recovery in seconds, not minutes: the sweeper looks every stale_after / 4.
FAST = {"IMSHIFT_STALE_AFTER": "2", "IMSHIFT_LEASE_SECONDS": "3", "IMSHIFT_REQUEUE_AFTER": "2"}
# The vendor's feed: a delivery not answered 2xx is tried again every 0.25 s for a minute.
FEED = {"retries": 240, "retry_delay": 0.25, "timeout": 3.0}
LATENCY = 0.1  # the target sandbox's added seconds a call: relays are in flight when a kill lands (0.05 left a relay time to finish between being seen in flight and the kill)
DONE_WITHIN = 90.0


# -- the flow and its tally ------------------------------------------------------------------

def plan_pairs(b, count: int = COUNT, pairs: int = PAIRS) -> list[Sent]:
    """`count` messages round-robin over `pairs` conversations (user k to
    user k+1); each text names its conversation and its place in it."""
    users = b.old.users
    return [Sent("old", users[n % pairs], users[n % pairs + 1], False, f"c{n % pairs}#{n // pairs}")
            for n in range(count)]


class Flow(threading.Thread):
    """The clients' sends at `rate` a second, in a thread of their own, so
    the test can kill things meanwhile."""

    def __init__(self, b, plan: list[Sent], rate: float = RATE):
        super().__init__(daemon=True)
        self.b, self.plan, self.rate = b, plan, rate
        self.error: BaseException | None = None
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            asyncio.run(send_all(self.b.old, self.plan, self.rate))
        except BaseException as exc:  # noqa: BLE001 (reported by finish)
            self.error = exc

    def sent(self) -> int:
        return sum(1 for m in self.plan if m.msg_id)

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the clients did not finish sending"
        if self.error:
            raise self.error


class Ledger:
    """The bridge's rows as the database holds them (read with an engine of
    the test's own, so the server's processes can die meanwhile)."""

    def __init__(self, database_url: str):
        # No pool: a connection the database's restart cut is never reused.
        self.engine = create_engine(normalise_url(database_url), poolclass=NullPool)

    def states(self) -> dict[str, str]:
        """Source message id -> state, for what the old side's feed stored."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(messages.c.msg_id, messages.c.state)
                                     .where(messages.c.from_app == "old")).all())

    def in_flight(self) -> int:
        """Messages claimed with their send mark written: on their way to the target."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(messages).where(
                messages.c.state == "claimed", messages.c.sent_at.is_not(None))).scalar_one()

    def turn(self) -> str | None:
        """Who holds the bridge's turn (None: nobody)."""
        from imshift.models.tables import Bridge

        bridges = Bridge.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(bridges.c.relayer, bridges.c.relayer_until)).first()
        return row.relayer if row.relayer_until and row.relayer_until > time.time() else None

    def stored(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(messages)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


def tally(b, plan: list[Sent], ledger: Ledger) -> dict[str, Any]:
    """What became of each message sent: stored, its state, how often its
    text is in its recipient's inbox at the target, and whether each
    conversation's texts came in order."""
    states = ledger.states()
    recipient = dict(zip(b.old.users, b.new.users, strict=True))
    got = received_texts(b.new, sorted({recipient[m.to] for m in plan}))
    seen = Counter(t for texts in got.values() for t in texts if t)
    out: dict[str, Any] = {"sent": len(plan), "stored": sum(1 for m in plan if m.msg_id in states)}
    by_state = Counter(states.get(m.msg_id, "not stored") for m in plan)
    out.update(ok=by_state["ok"], unknown=by_state["unknown"],
               waiting=by_state["pending"] + by_state["claimed"] + by_state["not stored"])
    out["arrived"] = sum(1 for m in plan if seen[m.text])
    out["duplicates"] = sorted(m.text for m in plan if seen[m.text] > 1)
    out["unknown_arrived"] = sum(1 for m in plan if states.get(m.msg_id) == "unknown" and seen[m.text])
    # Lost: anything that did not arrive and is not `unknown` (which may or may not have).
    out["lost"] = sorted(f"{m.text} ({states.get(m.msg_id, 'not stored')})" for m in plan
                         if not seen[m.text] and states.get(m.msg_id) != "unknown")
    out["other_states"] = {s: n for s, n in by_state.items()
                           if s not in ("ok", "unknown", "pending", "claimed", "not stored")}
    out_of_order = []
    for user, texts in got.items():
        places: dict[str, list[int]] = defaultdict(list)
        for t in texts:
            if t and "#" in t:
                conv, _, n = t.partition("#")
                places[conv].append(int(n))
        out_of_order += [(user, conv, ns) for conv, ns in places.items() if ns != sorted(ns)]
    out["out_of_order"] = out_of_order
    return out


def settled(b, plan, ledger: Ledger, flow: Flow) -> dict[str, Any]:
    """Wait until every message sent is stored and has an outcome, and every
    one not `unknown` arrived; the tally then."""
    last: dict[str, Any] = {}

    def done():
        if flow.is_alive() or feed_stats(b)["pending"]:
            return None
        last.clear()
        last.update(tally(b, plan, ledger))
        return dict(last) if last["waiting"] == 0 and not last["lost"] else None

    return wait_for(done, DONE_WITHIN, lambda: f"the bridge did not settle: {brief(last)}; "
                                               f"feed {feed_stats(b)}", pause=0.5)


def feed_stats(b) -> dict[str, Any]:
    return httpx.get(f"{b.old.url}/_sandbox/feed/stats", timeout=10).json()


def target_repeats(b) -> int:
    """Sends the target sandbox dropped as repeats (Maxim: a transaction_id seen before)."""
    return sum(httpx.get(f"{b.new.url}/_sandbox/stats", timeout=10).json().get("duplicates", {}).values())


def brief(t: dict[str, Any]) -> dict[str, Any]:
    """A tally for a message: lists cut short."""
    return {k: (v[:10] + ["..."] if isinstance(v, list) and len(v) > 10 else v) for k, v in t.items()}


def check_exact(t: dict[str, Any], feed: dict[str, Any], *, unknown_allowed: bool) -> None:
    """0 lost, 0 duplicated, in order; `unknown` only where the target does
    not deduplicate. Every delivery the feed gave up on would be a loss."""
    assert t["stored"] == t["sent"], brief(t)
    assert not t["lost"] and not t["duplicates"] and not t["out_of_order"], brief(t)
    assert not t["other_states"], brief(t)
    assert feed.get("failed", 0) == 0 and feed["pending"] == 0, feed
    if unknown_allowed:
        assert t["ok"] + t["unknown"] == t["sent"], brief(t)
    else:
        assert t["ok"] == t["arrived"] == t["sent"] and t["unknown"] == 0, brief(t)


def wait_in_flight(ledger: Ledger, alive: Callable[[], bool], timeout: float = 10.0) -> int:
    """Until a relay is under way (claimed, its send mark written); how many are."""
    deadline = time.monotonic() + timeout
    while True:
        n = ledger.in_flight()
        if n:
            return n
        assert alive() and time.monotonic() < deadline, "no relay in flight to kill"
        time.sleep(0.005)


def report(name: str, t: dict[str, Any], **more: Any) -> None:
    print(f"\n{name}: sent {t['sent']}, stored {t['stored']}, arrived {t['arrived']}, ok {t['ok']}, "
          f"unknown {t['unknown']} (of which arrived {t['unknown_arrived']}), duplicates "
          f"{len(t['duplicates'])}, lost {len(t['lost'])}; {more}")


# -- 1. the process receiving the feed (embedded: it relays too) killed ------------------------

@pytest.mark.parametrize("old_vendor,new_vendor", [("rongcloud", "maxim"), ("netease", "rongcloud")])
def test_serve_killed_mid_stream_and_restarted_loses_and_doubles_nothing(tmp_path, old_vendor, new_vendor):
    """`imshift serve` (no Redis: it stores the feed and relays) SIGKILLed
    with relays in flight while 100 messages a second arrive, and started
    again on the same port a second later. The feed retries what was not
    answered. Into Maxim (transaction_id) the relays in flight are sent
    again with their key; into RongCloud they end `unknown`."""
    db = f"sqlite:///{tmp_path}/imshift.db"
    log = tmp_path / "serve.log"
    port = free_port()
    with bridged(tmp_path, db, old_vendor, new_vendor, users=PAIRS + 1, new_latency=LATENCY) as b:
        ledger = Ledger(db)
        plan = plan_pairs(b)
        flow = Flow(b, plan)
        with serving(b, log, FAST, port=port) as server:
            b.old.feed_to(b.old.hook(b.server_url), **FEED)
            flow.start()
            time.sleep(1.0)
            wait_in_flight(ledger, lambda: server.poll() is None)
            kill(server)
            killed_at, sent_at_kill = time.monotonic() - flow.started_at, flow.sent()
            stored_at_kill = ledger.stored()
            in_flight = ledger.in_flight()  # the dead relayer's sends that had gone out
        time.sleep(1.0)  # down: the feed's deliveries meanwhile are refused and retried
        with serving(b, log, FAST, port=port):
            back_at = time.monotonic() - flow.started_at
            flow.finish()
            t = settled(b, plan, ledger, flow)
            status = httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()
        ledger.close()
        feed = feed_stats(b)
        repeats = target_repeats(b)
    report(f"serve killed ({old_vendor} -> {new_vendor})", t, in_flight_at_kill=in_flight,
           target_repeats_dropped=repeats,
           killed_at=round(killed_at, 2), back_at=round(back_at, 2), sent_at_kill=sent_at_kill,
           stored_at_kill=stored_at_kill, feed={k: feed.get(k) for k in ("sent", "acknowledged",
                                                                        "retried", "unanswered", "failed")})
    assert feed.get("retried", 0) > 0, feed  # the outage was real: the vendor had to try again
    check_exact(t, feed, unknown_allowed=new_vendor != "maxim")
    [way] = status["directions"]
    assert way["relayed"] == t["ok"] and way["unknown"] == t["unknown"] and way["failed"] == 0, status
    if new_vendor != "maxim":
        # Exactly what was in flight when the relayer died ended unknown.
        assert t["unknown"] == in_flight > 0, (t["unknown"], in_flight)


# -- 2. with Redis: the worker processes that relay killed -----------------------------------

@pytest.fixture
def cluster():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin)")
    with PostgresCluster() as pg:
        yield pg


@contextlib.contextmanager
def redis_rig(tmp_path: Path, pg: PostgresCluster, redis: RedisServer, old_vendor: str = "rongcloud",
              new_vendor: str = "maxim", processes: int = 2):
    """The bridge on a database of `pg`, `imshift serve` and `imshift worker
    --processes N` with REDIS_URL, the old side's feed pointed at serve."""
    db = pg.create_database("imshift_bridge")
    extra = {"REDIS_URL": redis.url, **FAST}
    with bridged(tmp_path, db, old_vendor, new_vendor, users=PAIRS + 1, new_latency=LATENCY) as b:
        with working(b, tmp_path / "workers.log", extra, processes=processes) as pool, \
                serving(b, tmp_path / "serve.log", extra) as server:
            b.old.feed_to(b.old.hook(b.server_url), **FEED)
            ledger = Ledger(db)
            try:
                yield b, pool, server, ledger
            finally:
                ledger.close()


def test_worker_processes_killed_mid_stream_lose_and_double_nothing(tmp_path, cluster, redis_server):
    """Both relaying worker processes SIGKILLed with relays in flight (into
    Maxim); the pool starts new ones, the sweeper wakes the bridge once the
    dead relayer's turn lapses, and the relays in flight go again with
    their transaction_id: each message arrives once."""
    log = tmp_path / "workers.log"
    with redis_rig(tmp_path, cluster, redis_server) as (b, pool, server, ledger):
        plan = plan_pairs(b)
        flow = Flow(b, plan)
        flow.start()
        time.sleep(1.0)
        in_flight = wait_in_flight(ledger, lambda: pool.poll() is None)
        victims = worker_processes(pool)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic() - flow.started_at
        wait_for(lambda: all(f"process {pid} exited (signal 9)" in log.read_text() for pid in victims), 30,
                 lambda: log.read_text()[-3000:])
        wait_for_workers(pool, log, 2, ready=2 + len(victims))  # the pool replaced them
        replaced_at = time.monotonic() - flow.started_at
        flow.finish()
        t = settled(b, plan, ledger, flow)
        done_at = time.monotonic() - flow.started_at
        assert server.poll() is None
        feed = feed_stats(b)
        repeats = target_repeats(b)
    report("workers killed (Redis, rongcloud -> maxim)", t, in_flight_at_kill=in_flight, killed=len(victims),
           target_repeats_dropped=repeats,
           killed_at=round(killed_at, 2), replaced_at=round(replaced_at, 2), done_at=round(done_at, 2))
    check_exact(t, feed, unknown_allowed=False)


# -- 3. Redis, then PostgreSQL, restarted mid-stream ----------------------------------------

def test_redis_restarted_mid_stream_loses_and_doubles_nothing(tmp_path, cluster):
    """Redis (the workers' queue) SIGKILLed and started again (empty: no
    persistence) 2 s later, twice: first with relays in flight (the relayer
    holding the turn needs no Redis: it carries on), then while the bridge is
    idle, so that the next delivery needs a wake queued in Redis: it is
    stored and taken (200), and the server's waker queues the wake once
    Redis answers again."""
    with RedisServer() as redis, redis_rig(tmp_path, cluster, redis) as (b, pool, server, ledger):
        plan = plan_pairs(b)
        half = len(plan) // 2
        first, second = Flow(b, plan[:half]), Flow(b, plan[half:])
        first.start()
        time.sleep(0.5)
        in_flight = wait_in_flight(ledger, lambda: pool.poll() is None)
        redis.kill()
        time.sleep(2.0)
        redis.start()
        first.finish()
        t1 = settled(b, plan[:half], ledger, first)
        check_exact(t1, feed_stats(b), unknown_allowed=False)
        wait_for(lambda: ledger.turn() is None, 30, "the relayer did not give its turn back")
        refused_before = refusals(feed_stats(b))
        redis.kill()
        second.start()
        began = time.monotonic()
        time.sleep(2.0)
        redis.start()
        second.finish()
        t = settled(b, plan, ledger, second)
        done_after = time.monotonic() - began
        assert server.poll() is None and pool.poll() is None
        feed = feed_stats(b)
        repeats = target_repeats(b)
    report("Redis killed and restarted (twice)", t, in_flight_at_first_kill=in_flight,
           target_repeats_dropped=repeats,
           second_done_after=round(done_after, 2),
           feed={k: v for k, v in feed.items() if not k.endswith(("_p50", "_p99"))})
    check_exact(t, feed, unknown_allowed=False)
    del refused_before


def refusals(feed: dict[str, Any]) -> int:
    """Deliveries answered 5xx or not at all (the vendor tries them again)."""
    return sum(v for k, v in feed.items() if k.startswith("http 5") or k == "unanswered")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_stream_loses_and_doubles_nothing(tmp_path, cluster, redis_server, mode):
    """PostgreSQL stopped (`fast`: connections cut, a clean shutdown;
    `immediate`: as a crash) with relays in flight and started again 2 s
    later. Deliveries meanwhile are answered 503 and retried by the vendor;
    the relayer whose database went away dies, its turn lapses, and the
    next one sends the relays it had in flight again (Maxim drops the
    repeats by transaction_id)."""
    with redis_rig(tmp_path, cluster, redis_server) as (b, pool, server, ledger):
        plan = plan_pairs(b)
        flow = Flow(b, plan)
        flow.start()
        time.sleep(1.0)
        in_flight = wait_in_flight(ledger, lambda: pool.poll() is None)
        cluster.stop(mode)
        down_at = time.monotonic() - flow.started_at
        time.sleep(2.0)
        cluster.start()
        up_at = time.monotonic() - flow.started_at
        flow.finish()
        t = settled(b, plan, ledger, flow)
        done_at = time.monotonic() - flow.started_at
        assert server.poll() is None and pool.poll() is None
        feed = feed_stats(b)
        repeats = target_repeats(b)
    report(f"PostgreSQL stopped ({mode}) and restarted", t, in_flight_at_kill=in_flight,
           target_repeats_dropped=repeats,
           down_at=round(down_at, 2), up_at=round(up_at, 2), done_at=round(done_at, 2),
           feed={k: v for k, v in feed.items() if not k.endswith(("_p50", "_p99"))})
    assert feed.get("http 503", 0) > 0, feed  # deliveries during the outage were refused
    check_exact(t, feed, unknown_allowed=False)
