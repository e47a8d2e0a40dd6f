"""Bridges for the cut-over: adding one, its state changes, storing what a
feed delivers, and what `bridge status` and the API show.

A delivery is stored before it is answered (`receive`), one row per
(bridge, sending app, vendor message id), so a repeat is dropped and a crash
loses nothing the vendor was told is safe. Relaying is workers/relay.py's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from imshift.models.feed_counts import count
from imshift.models.tables import Bridge, BridgeMessage, BridgeStatus, FeedCount, ItemState, Run
from imshift.vendors.feeds import FeedMessage

bridges = Bridge.__table__
messages = BridgeMessage.__table__
feed_counts = FeedCount.__table__
runs = Run.__table__

FINAL = (ItemState.OK.value, ItemState.REJECTED.value, ItemState.FAILED.value, ItemState.UNKNOWN.value)


class BridgeError(Exception):
    """A bridge request that cannot be done; the message says why and what to run."""


def bridge_id(text: str) -> int:
    """B<n> (or a bare number) -> n."""
    raw = text[1:] if text[:1] in "bB" else text
    if not raw.isdigit():
        raise BridgeError(f"{text!r} is not a bridge id: bridges are B<n> (`imshift bridge list`)")
    return int(raw)


def add(engine: Engine, *, source_app: str, app: str, run_id: int, both_ways: bool,
        hold: float, settle: float) -> int:
    """A new active bridge; the run must be a migration from `source_app` to `app`."""
    with engine.begin() as conn:
        run = conn.execute(select(runs.c.source_app, runs.c.app).where(runs.c.id == run_id)).first()
        if run is None:
            raise BridgeError(f"no run R{run_id}: `imshift status` lists the runs")
        if (run.source_app, run.app) != (source_app, app):
            raise BridgeError(f"run R{run_id} migrates {run.source_app} -> {run.app}, not "
                              f"{source_app} -> {app}: bridge the apps the run moved")
        clash = conn.execute(select(bridges.c.id).where(
            bridges.c.status != BridgeStatus.REMOVED.value,
            or_(bridges.c.source_app == source_app, bridges.c.app == source_app,
                bridges.c.source_app == app, bridges.c.app == app))).scalar()
        if clash is not None:
            raise BridgeError(f"bridge B{clash} already relays one of these apps: one feed, one "
                              f"bridge (`imshift bridge remove B{clash}` first)")
        return conn.execute(bridges.insert().values(
            source_app=source_app, app=app, run_id=run_id, both_ways=both_ways, hold=hold,
            settle=settle, status=BridgeStatus.ACTIVE.value, created_at=time.time())
            .returning(bridges.c.id)).scalar_one()


def get(conn: Connection, bid: int) -> Any:
    row = conn.execute(select(bridges).where(bridges.c.id == bid)).first()
    if row is None:
        raise BridgeError(f"no bridge B{bid}: `imshift bridge list` lists them")
    return row


def listed(engine: Engine, *, removed: bool = False) -> list[Any]:
    query = select(bridges).order_by(bridges.c.id.desc())
    if not removed:
        query = query.where(bridges.c.status != BridgeStatus.REMOVED.value)
    with engine.connect() as conn:
        return list(conn.execute(query).all())


# Which status each command moves from, and to.
MOVES = {"pause": ((BridgeStatus.ACTIVE,), BridgeStatus.PAUSED),
         "resume": ((BridgeStatus.PAUSED, BridgeStatus.STOPPED), BridgeStatus.ACTIVE),
         "remove": ((BridgeStatus.ACTIVE, BridgeStatus.PAUSED, BridgeStatus.STOPPED), BridgeStatus.REMOVED)}


def control(engine: Engine, bid: int, command: str) -> str:
    """Pause, resume or remove: one compare-and-set; the new status."""
    sources, target = MOVES[command]
    with engine.begin() as conn:
        status = get(conn, bid).status
        if status not in {s.value for s in sources}:
            raise BridgeError(f"bridge B{bid} is {status}: it cannot {command} "
                              f"(`imshift bridge status B{bid}`)")
        done = conn.execute(update(bridges).where(bridges.c.id == bid, bridges.c.status == status)
                            .values(status=target.value, stop_reason=None)).rowcount
        if not done:
            raise BridgeError(f"bridge B{bid} changed meanwhile: look again (`imshift bridge status B{bid}`)")
    return target.value


def retry(engine: Engine, bid: int, *, unknown: bool = False) -> int:
    """Relay again the messages that ended `failed` (a held id that the run
    has mapped since, a vendor that was down) and, with `unknown`, those whose
    relay may have gone out (the user's decision: they may arrive twice).
    They wait for --hold again from now; the bridge's relayer takes them
    next. Rejected ones are not: the target said no. How many."""
    states = [ItemState.FAILED.value] + ([ItemState.UNKNOWN.value] if unknown else [])
    with engine.begin() as conn:
        get(conn, bid)
        return conn.execute(update(messages).where(messages.c.bridge_id == bid, messages.c.state.in_(states))
                            .values(state=ItemState.PENDING.value, attempts=0, not_before=None,
                                    sent_at=None, code=None, message=None,
                                    received_at=time.time())).rowcount


def stop(conn: Connection, bid: int, reason: str) -> None:
    conn.execute(update(bridges).where(bridges.c.id == bid, bridges.c.status == BridgeStatus.ACTIVE.value)
                 .values(status=BridgeStatus.STOPPED.value, stop_reason=reason))


# -- receiving a feed -------------------------------------------------------------------------

def feeding(conn: Connection, app: str) -> Any | None:
    """The bridge that takes `app`'s feed (as the old side, or the new one
    when it runs both ways), or None."""
    return conn.execute(select(bridges).where(
        bridges.c.status != BridgeStatus.REMOVED.value,
        or_(bridges.c.source_app == app, and_(bridges.c.app == app, bridges.c.both_ways)))).first()


@dataclass(frozen=True)
class Received:
    stored: int
    duplicates: int
    echoes: int


def receive(conn: Connection, bridge: Any, app: str, delivered: Sequence[FeedMessage],
            now: float | None = None) -> Received:
    """Store the messages of one delivery from `app`'s feed (in the caller's
    transaction, committed before the delivery is answered). A message
    already stored is a duplicate; one the bridge sent itself (marked, or
    its id recorded as a relayed message's) is an echo. Neither is stored."""
    now = time.time() if now is None else now
    echoes = [m for m in delivered if m.marked]
    rest = [m for m in delivered if not m.marked]
    if rest:  # relayed into `app` by this bridge: the target's id was recorded
        ours = set(conn.execute(select(messages.c.target_msg_id).where(
            messages.c.bridge_id == bridge.id, messages.c.from_app != app,
            messages.c.target_msg_id.in_([m.msg_id for m in rest]))).scalars())
        echoes += [m for m in rest if m.msg_id in ours]
        rest = [m for m in rest if m.msg_id not in ours]
    unique = list({m.msg_id: m for m in rest}.values())  # one delivery may carry a message twice
    stored = 0
    if unique:
        insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
        statement = insert(messages).values([row(bridge.id, app, m, now) for m in unique])
        # The rows RETURNING gives, not rowcount: psycopg's is -1 for this insert on PostgreSQL.
        stored = len(conn.execute(statement.on_conflict_do_nothing(
            index_elements=["bridge_id", "from_app", "msg_id"]).returning(messages.c.id)).all())
    duplicates = len(rest) - stored
    count(conn, app, "duplicates", duplicates)
    count(conn, app, "echoes", len(echoes))
    return Received(stored, duplicates, len(echoes))


def row(bid: int, app: str, m: FeedMessage, now: float) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if m.text is not None:
        content["text"] = m.text
    if m.custom is not None:
        content["custom"] = dict(m.custom)
    if m.recalls is not None:
        content["recalls"] = m.recalls
    return {"bridge_id": bid, "from_app": app, "msg_id": m.msg_id, "conversation": m.conversation,
            "sender": m.sender, "to": m.to, "is_group": m.group, "sent_at_ms": m.sent_at_ms,
            "kind": m.kind, "content": content, "state": ItemState.PENDING.value, "attempts": 0,
            "received_at": now}


def as_feed_message(r: Any) -> FeedMessage:
    content = r.content or {}
    return FeedMessage(msg_id=r.msg_id, sender=r.sender, to=r.to, group=r.is_group,
                       sent_at_ms=r.sent_at_ms, kind=r.kind, text=content.get("text"),
                       custom=content.get("custom"), recalls=content.get("recalls"))


# -- what status shows ------------------------------------------------------------------------

def directions(bridge: Any) -> list[tuple[str, str]]:
    """(from app, to app) of each way the bridge relays."""
    ways = [(bridge.source_app, bridge.app)]
    return ways + [(bridge.app, bridge.source_app)] if bridge.both_ways else ways


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(share * len(values)))]


def recent_lags(conn: Connection, bid: int, from_app: str, sample: int) -> list[float]:
    """Seconds from the source's timestamp to the target's acceptance, for
    the latest `sample` messages relayed from `from_app` (bridge status and
    the metrics' histogram, imshift/metrics.py)."""
    return [r.relayed_at - r.sent_at_ms / 1000 for r in conn.execute(
        select(messages.c.relayed_at, messages.c.sent_at_ms).where(
            messages.c.bridge_id == bid, messages.c.from_app == from_app,
            messages.c.relayed_at.is_not(None))
        .order_by(messages.c.id.desc()).limit(sample)).all()]


def report(engine: Engine, bid: int, lag_sample: int = 2000) -> dict[str, Any]:
    """The bridge and, per direction: messages by state (held ones apart),
    duplicates dropped, echoes dropped, refused deliveries, and the lag from
    the source's timestamp to the target's acceptance (p50/p99 of the last
    `lag_sample` relayed)."""
    with engine.connect() as conn:
        bridge = get(conn, bid)
        ways = []
        for source, target in directions(bridge):
            states: dict[str, int] = dict(conn.execute(select(messages.c.state, func.count()).where(
                messages.c.bridge_id == bid, messages.c.from_app == source)
                .group_by(messages.c.state)).all())
            held = conn.execute(select(func.count()).where(
                messages.c.bridge_id == bid, messages.c.from_app == source,
                messages.c.state == ItemState.PENDING.value, messages.c.code == "held")).scalar_one()
            lags = recent_lags(conn, bid, source, lag_sample)
            fed = dict(conn.execute(select(feed_counts.c.name, feed_counts.c.n)
                                    .where(feed_counts.c.app == source)).all())
            ways.append({
                "from": source, "to": target,
                "relayed": states.get(ItemState.OK.value, 0),
                "pending": states.get(ItemState.PENDING.value, 0) - held + states.get("claimed", 0),
                "held": held,
                "failed": sum(states.get(s, 0) for s in (ItemState.REJECTED.value, ItemState.FAILED.value)),
                "rejected": states.get(ItemState.REJECTED.value, 0),  # of failed: retry leaves them
                "unknown": states.get(ItemState.UNKNOWN.value, 0),
                "duplicates": fed.get("duplicates", 0), "echoes": fed.get("echoes", 0),
                "refused": fed.get("refused", 0), "ignored": fed.get("ignored", 0),
                "lag_p50": _percentile(lags, 0.5), "lag_p99": _percentile(lags, 0.99)})
        failures = [dict(r._mapping) for r in conn.execute(
            select(messages.c.from_app, messages.c.msg_id, messages.c.state, messages.c.code,
                   messages.c.message).where(
                messages.c.bridge_id == bid,
                messages.c.state.in_((ItemState.REJECTED.value, ItemState.FAILED.value,
                                      ItemState.UNKNOWN.value)))
            .order_by(messages.c.id.desc()).limit(5)).all()]
    return {"id": bid, "name": f"B{bid}", "from": bridge.source_app, "to": bridge.app,
            "run": f"R{bridge.run_id}", "both_ways": bridge.both_ways, "hold": bridge.hold,
            "settle": bridge.settle, "status": bridge.status, "stop_reason": bridge.stop_reason,
            "created_at": bridge.created_at, "directions": ways, "last_failures": failures}


def refused(engine: Engine, app: str) -> None:
    """Count a refused delivery for `app` (its own transaction)."""
    with engine.begin() as conn:
        count(conn, app, "refused")
