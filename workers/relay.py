"""Relay a bridge's stored messages to the other side, in order, once.

One relayer at a time holds a bridge's turn (bridges.relayer, renewed while
it works; a dead relayer's turn runs out and the next wake takes over). It
keeps each conversation's waiting messages in (source timestamp, id) order
and sends only a conversation's first, so a pair or a group gets them as the
source had them; conversations go in parallel, within the process's calls
in flight and the target app's rate limit, which it shares with every job on
that app (its sends go first: workers/ratelimit.py's urgent lane).

A send that is not safe to repeat is marked `sent_at` once the limiter lets
it go; a relayer that dies after that leaves it `unknown` (never sent again
unless the target deduplicates, as Maxim does by transaction_id), and one
that dies before leaves it pending for the next.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection

from imshift.models.tables import Bridge, BridgeMessage, BridgeStatus, IdMap, ItemState, Run
from imshift.vendors.feeds import KINDS, FeedMessage
from imshift.vendors.vocabulary import Operation, Outcome, Result

from .ratelimit import urgent
from .runtime import Runtime, before_send

log = logging.getLogger("imshift.workers")
bridges = Bridge.__table__
messages = BridgeMessage.__table__
id_map = IdMap.__table__
runs = Run.__table__

TURN = 15.0  # seconds a relayer's turn lasts unless renewed
RUN_FOR = 60.0  # a relayer gives its turn back after this (an actor's time limit), waking the next
IDLE = 1.0  # seconds with nothing to do before the turn is given back
POLL = 0.02  # seconds between looks for new messages while working
HELD_RETRY = 1.0  # seconds between looks at the id map for a held message
QUEUED = "queued"  # the turn's holder when a wake is queued but not started


def dedup_key(bridge_id: int, from_app: str, msg_id: str) -> str:
    """Derived from the source message, so a retried relay carries the same key."""
    return hashlib.sha256(f"bridge:{bridge_id}:{from_app}:{msg_id}".encode()).hexdigest()[:32]


# -- the turn ---------------------------------------------------------------------------------

def take_turn(conn: Connection, bid: int, me: str, now: float) -> bool:
    return conn.execute(update(bridges).where(
        bridges.c.id == bid, bridges.c.status == BridgeStatus.ACTIVE.value,
        or_(bridges.c.relayer_until.is_(None), bridges.c.relayer_until < now,
            bridges.c.relayer == QUEUED, bridges.c.relayer == me))
        .values(relayer=me, relayer_until=now + TURN)).rowcount == 1


def wake_needed(conn: Connection, bid: int, now: float) -> bool:
    """Mark a wake as queued when nobody holds the turn: True when the
    caller must queue one (after its transaction commits)."""
    return conn.execute(update(bridges).where(
        bridges.c.id == bid, bridges.c.status == BridgeStatus.ACTIVE.value,
        or_(bridges.c.relayer_until.is_(None), bridges.c.relayer_until < now))
        .values(relayer=QUEUED, relayer_until=now + TURN)).rowcount == 1


def _give_back(conn: Connection, bid: int, me: str) -> None:
    conn.execute(update(bridges).where(bridges.c.id == bid, bridges.c.relayer == me)
                 .values(relayer=None, relayer_until=None))


# -- the id map -------------------------------------------------------------------------------

def run_chain(conn: Connection, run_id: int) -> list[int]:
    """The run and its delta re-runs (--since), which map the accounts added later."""
    chain, frontier = [run_id], [run_id]
    while frontier:
        frontier = list(conn.execute(select(runs.c.id).where(runs.c.since.in_(frontier))).scalars())
        chain += frontier
    return chain


def map_ids(conn: Connection, chain: list[int], kind: str, ids: set[str], forward: bool) -> dict[str, str]:
    """Ids as the other side knows them: source -> target (forward), or back."""
    if not ids:
        return {}
    have, want = (id_map.c.source_id, id_map.c.target_id) if forward else (id_map.c.target_id,
                                                                             id_map.c.source_id)
    return dict(conn.execute(select(have, want).where(
        id_map.c.run_id.in_(chain), id_map.c.kind == kind, have.in_(sorted(ids)))).all())


# -- the relayer ------------------------------------------------------------------------------

@dataclass
class Waiting:
    id: int
    sent_at_ms: int
    received_at: float
    not_before: float | None

    def key(self) -> tuple[int, int]:
        return self.sent_at_ms, self.id


@dataclass
class Relayer:
    runtime: Runtime
    bridge: Any
    me: str = field(default_factory=lambda: f"relay-{uuid.uuid4().hex[:12]}")
    queues: dict[tuple[str, str], list[Waiting]] = field(default_factory=dict)
    busy: set[tuple[str, str]] = field(default_factory=set)
    seen: int = 0  # the highest message id read

    @property
    def bid(self) -> int:
        return self.bridge.id

    def _db(self, work):
        return asyncio.to_thread(self._in_transaction, work)

    def _in_transaction(self, work):
        with self.runtime.engine.begin() as conn:
            return work(conn)

    # reading ---------------------------------------------------------------------------

    def _recover(self, conn: Connection) -> None:
        """Messages a dead relayer held: not let go yet -> pending; maybe sent ->
        `unknown`, or pending again where the target drops a repeated send."""
        held = conn.execute(select(messages.c.id, messages.c.from_app, messages.c.sent_at).where(
            messages.c.bridge_id == self.bid, messages.c.state == "claimed")).all()
        for row in held:
            safe = self.runtime.client(self.target_of(row.from_app)).repeat_safe(Operation.SEND)
            if row.sent_at is None or safe:
                values = {"state": ItemState.PENDING.value, "claim": None}
            else:
                values = {"state": ItemState.UNKNOWN.value, "claim": None, "code": "unknown",
                          "message": "the relayer stopped after the send went out and before its "
                                     "answer: it may have been delivered, so it is not sent again"}
            conn.execute(update(messages).where(messages.c.id == row.id).values(**values))

    def _read_new(self, conn: Connection) -> None:
        rows = conn.execute(select(messages.c.id, messages.c.from_app, messages.c.conversation,
                                   messages.c.sent_at_ms, messages.c.received_at, messages.c.not_before,
                                   messages.c.state)
                            .where(messages.c.bridge_id == self.bid, messages.c.id > self.seen,
                                   messages.c.state == ItemState.PENDING.value)
                            .order_by(messages.c.id).limit(20000)).all()
        for r in rows:
            self.seen = max(self.seen, r.id)
            queue = self.queues.setdefault((r.from_app, r.conversation), [])
            one = Waiting(r.id, r.sent_at_ms, r.received_at, r.not_before)
            bisect.insort(queue, one, key=Waiting.key)

    def target_of(self, from_app: str) -> str:
        return self.bridge.app if from_app == self.bridge.source_app else self.bridge.source_app

    # the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        started = time.time()
        await self._db(self._recover)
        chain = await self._db(lambda conn: run_chain(conn, self.bridge.run_id))
        idle_since: float | None = None
        inflight: set[asyncio.Task] = set()
        renewed = time.time()
        while time.time() - started < RUN_FOR:
            await self._db(self._read_new)
            now = time.time()
            due_heads = [(conv, q[0]) for conv, q in self.queues.items()
                         if q and conv not in self.busy and self._due(q[0], now)]
            gate = self.runtime.tuning.concurrency
            for conv, head in due_heads[:max(0, gate - len(inflight))]:
                self.busy.add(conv)
                inflight.add(asyncio.ensure_future(self._relay(conv, head, chain)))
            if inflight:
                idle_since = None
                done, inflight = await asyncio.wait(inflight, timeout=POLL,
                                                    return_when=asyncio.FIRST_COMPLETED)
                inflight = set(inflight)
                for task in done:
                    task.result()
            else:
                if any(self.queues.values()):
                    idle_since = None
                    await asyncio.sleep(POLL)
                else:
                    idle_since = idle_since or now
                    if now - idle_since >= IDLE:
                        break
                    await asyncio.sleep(POLL)
            if time.time() - renewed > TURN / 3:
                renewed = time.time()
                if not await self._db(self._renew):
                    break  # paused, removed, stopped, or the turn was lost: leave the rest
        if inflight:
            await asyncio.wait(inflight)

    def _due(self, head: Waiting, now: float) -> bool:
        return head.received_at + self.bridge.settle <= now and (head.not_before or 0) <= now

    def _renew(self, conn: Connection) -> bool:
        return conn.execute(update(bridges).where(
            bridges.c.id == self.bid, bridges.c.relayer == self.me,
            bridges.c.status == BridgeStatus.ACTIVE.value)
            .values(relayer_until=time.time() + TURN)).rowcount == 1

    # one message -----------------------------------------------------------------------

    async def _relay(self, conv: tuple[str, str], head: Waiting, chain: list[int]) -> None:
        try:
            outcome = await self._relay_one(head, chain)
        except Exception:  # a bug or the database: the message stays pending for a later turn
            log.exception("bridge B%s: relaying message %s failed", self.bid, head.id)
            outcome = time.time() + 1.0
        queue = self.queues.get(conv, [])
        if outcome == "done" and queue and queue[0] is head:
            queue.pop(0)
        elif isinstance(outcome, float):  # to be tried again then
            head.not_before = outcome
        self.busy.discard(conv)

    async def _relay_one(self, head: Waiting, chain: list[int]) -> str | float:
        """"done" (final, or no longer this relayer's), "held", or when to try again."""
        token = uuid.uuid4().hex
        row = await self._db(lambda conn: self._claim(conn, head.id, token))
        if row is None:
            return "done"  # no longer pending (resolved elsewhere)
        target = self.target_of(row.from_app)
        forward = row.from_app == self.bridge.source_app
        ids = await self._db(lambda conn: self._map(conn, chain, row, forward))
        if isinstance(ids, str):  # an id the run has not mapped
            return await self._db(lambda conn: self._hold(conn, row, token, ids, head))
        source = FeedMessage(msg_id=row.msg_id, sender=ids[0], to=ids[1], group=row.is_group,
                             sent_at_ms=row.sent_at_ms, kind=row.kind, **_content(row.content))
        client = self.runtime.client(target)
        if row.kind not in KINDS:
            result = Result(Outcome.REJECTED, "kind",
                            f"a {row.kind} message cannot be relayed (the bridge carries "
                            f"{', '.join(k for k in KINDS if k != 'recall')} and recalls)")
        elif row.kind == "recall":
            result = await self._recall(client, source, row)
        else:
            result = await self._send(client, source, row, token)
        again = await self._db(lambda conn: self._record(conn, row, token, result, target,
                                                         client.repeat_safe(Operation.SEND)))
        if result.outcome is Outcome.RATE_LIMITED:
            op = Operation.SEND_GROUP if row.is_group else Operation.SEND
            await self.runtime.limiter.slow_down(target, op.value, result.retry_after)
        return "done" if again is None else again

    async def _send(self, client, source: FeedMessage, row: Any, token: str) -> Result:
        announced = False

        async def mark() -> None:
            nonlocal announced
            if not announced:
                announced = True
                await self._db(lambda conn: conn.execute(update(messages).where(
                    messages.c.id == row.id, messages.c.claim == token).values(sent_at=time.time())))

        before_send.set(mark)
        urgent.set(True)
        try:
            async with self.runtime.gate():
                return await client.relay(source, dedup_key=dedup_key(self.bid, row.from_app, row.msg_id))
        except Exception as exc:  # a client bug: the message is kept, not lost
            log.exception("bridge B%s: relay call failed", self.bid)
            return Result(Outcome.RETRYABLE, "client-error", type(exc).__name__,
                          maybe_delivered=announced)
        finally:
            before_send.set(None)
            urgent.set(False)

    async def _recall(self, client, source: FeedMessage, row: Any) -> Result:
        original = await self._db(lambda conn: conn.execute(select(
            messages.c.state, messages.c.target_msg_id, messages.c.target_sent_at_ms).where(
            messages.c.bridge_id == self.bid, messages.c.from_app == row.from_app,
            messages.c.msg_id == (row.content or {}).get("recalls"))).first())
        if original is None or original.state != ItemState.OK.value or not original.target_msg_id:
            state = "not stored" if original is None else original.state
            return Result(Outcome.REJECTED, "not-relayed",
                          f"the recalled message {source.recalls} was not relayed ({state}): nothing to take back")
        if not client.recalls:
            return Result(Outcome.REJECTED, "unsupported",
                          f"{client.vendor} has no server-side recall: the recall is not relayed")
        urgent.set(True)
        try:
            async with self.runtime.gate():
                # The recall names the relayed message as the target knows it: its id and time.
                relayed = replace(source, sent_at_ms=original.target_sent_at_ms or source.sent_at_ms)
                return await client.recall(relayed, original.target_msg_id)
        finally:
            urgent.set(False)

    # database steps --------------------------------------------------------------------

    def _claim(self, conn: Connection, mid: int, token: str) -> Any:
        done = conn.execute(update(messages).where(messages.c.id == mid,
                                                   messages.c.state == ItemState.PENDING.value)
                            .values(state="claimed", claim=token, sent_at=None,
                                    lease_until=time.time() + self.runtime.tuning.lease_seconds)).rowcount
        if not done:
            return None
        return conn.execute(select(messages).where(messages.c.id == mid)).first()

    def _map(self, conn: Connection, chain: list[int], row: Any, forward: bool) -> tuple[str, str] | str:
        users = map_ids(conn, chain, "user", {row.sender} | (set() if row.is_group else {row.to}), forward)
        groups = map_ids(conn, chain, "group", {row.to}, forward) if row.is_group else {}
        sender, to = users.get(row.sender), (groups if row.is_group else users).get(row.to)
        if sender is None:
            return f"user {row.sender}"
        if to is None:
            return f"{'group' if row.is_group else 'user'} {row.to}"
        return sender, to

    def _hold(self, conn: Connection, row: Any, token: str, what: str, head: Waiting) -> str:
        now = time.time()
        run = f"R{self.bridge.run_id}"
        if now - row.received_at < self.bridge.hold:
            head.not_before = now + HELD_RETRY
            conn.execute(update(messages).where(messages.c.id == row.id, messages.c.claim == token)
                         .values(state=ItemState.PENDING.value, claim=None, code="held",
                                 not_before=head.not_before,
                                 message=f"held: {what} is not in run {run}'s id map yet"))
            return "held"
        conn.execute(update(messages).where(messages.c.id == row.id, messages.c.claim == token)
                     .values(state=ItemState.FAILED.value, claim=None, code="unmapped",
                             message=f"{what} is not in the id map of run {run} or its delta runs "
                                     f"(held {self.bridge.hold:.0f} s): migrate it (`imshift migrate run "
                                     f"... --since {run}`), then it is relayed from then on"))
        return "done"

    def _record(self, conn: Connection, row: Any, token: str, result: Result, target: str,
                repeat_safe: bool) -> float | None:
        """Record the answer; when the message is to be tried again, when."""
        now = time.time()
        attempts = row.attempts + 1
        values: dict[str, Any] = {"claim": None, "attempts": attempts, "code": result.code,
                                  "message": result.message, "not_before": None}
        if result.succeeded:
            sent = result.data.get("sent_at_ms")
            values.update(state=ItemState.OK.value, relayed_at=now,
                          target_msg_id=str(result.data.get("msg_id") or "") or None,
                          target_sent_at_ms=int(sent) if sent is not None else None)
        elif result.outcome is Outcome.REJECTED:
            values["state"] = ItemState.REJECTED.value
        elif result.maybe_delivered and not repeat_safe:
            values.update(state=ItemState.UNKNOWN.value,
                          message=f"{result.message}; it may have been delivered, so it is not sent again")
        elif result.outcome is Outcome.AUTH:
            values.update(state=ItemState.PENDING.value, sent_at=None, not_before=now + 1.0)
            conn.execute(update(bridges).where(bridges.c.id == self.bid,
                                               bridges.c.status == BridgeStatus.ACTIVE.value)
                         .values(status=BridgeStatus.STOPPED.value,
                                 stop_reason=f"{target} refused the credentials: {result.code} "
                                             f"{result.message}; fix them, then "
                                             f"`imshift bridge resume B{self.bid}`"))
        elif attempts >= self.runtime.tuning.max_attempts:
            values["state"] = ItemState.FAILED.value
        else:
            wait = result.retry_after or min(30.0, 0.5 * 2 ** attempts)
            values.update(state=ItemState.PENDING.value, not_before=now + wait, sent_at=None)
        conn.execute(update(messages).where(messages.c.id == row.id, messages.c.claim == token)
                     .values(**values))
        return values["not_before"] if values.get("state") == ItemState.PENDING.value else None


def _content(content: dict[str, Any] | None) -> dict[str, Any]:
    content = content or {}
    return {"text": content.get("text"), "custom": content.get("custom"), "recalls": content.get("recalls")}


async def relay_bridge(runtime: Runtime, bid: int) -> None:
    """Relay bridge `bid`'s waiting messages while this process holds its
    turn; give the turn back when idle, or after RUN_FOR (then wake the next)."""
    def start(conn: Connection) -> Any:
        if not take_turn(conn, bid, me, time.time()):
            return None
        return conn.execute(select(bridges).where(bridges.c.id == bid)).first()

    me = f"relay-{uuid.uuid4().hex[:12]}"
    bridge = await asyncio.to_thread(_begin, runtime, start)
    if bridge is None:
        return  # another relayer has the turn, or the bridge is not active
    relayer = Relayer(runtime, bridge, me=me)
    try:
        await relayer.run()
    finally:
        more = await asyncio.to_thread(_begin, runtime, lambda conn: _end_turn(conn, bid, me))
        if more:
            runtime.broker.actors["relay_bridge"].send(bid)


def _begin(runtime: Runtime, work):
    with runtime.engine.begin() as conn:
        return work(conn)


def _end_turn(conn: Connection, bid: int, me: str) -> bool:
    """Give the turn back; True when messages wait and a wake was queued for them."""
    _give_back(conn, bid, me)
    waiting = conn.execute(select(messages.c.id).where(
        messages.c.bridge_id == bid, messages.c.state == ItemState.PENDING.value).limit(1)).first()
    return waiting is not None and wake_needed(conn, bid, time.time())


def stale_bridges(conn: Connection, now: float) -> list[int]:
    """Active bridges with waiting messages whose turn nobody holds (a lost
    wake, a dead relayer): the sweeper wakes them."""
    waiting = select(messages.c.bridge_id).where(
        messages.c.state.in_((ItemState.PENDING.value, "claimed"))).distinct()
    return list(conn.execute(select(bridges.c.id).where(
        bridges.c.status == BridgeStatus.ACTIVE.value, bridges.c.id.in_(waiting),
        or_(bridges.c.relayer_until.is_(None), bridges.c.relayer_until < now))).scalars())

