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
import contextlib
import hashlib
import logging
import time
import uuid
from functools import partial
from types import SimpleNamespace
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import bindparam, case, or_, select, update
from sqlalchemy.engine import Connection

from imshift.models.feed_counts import count
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
RESCAN = 2.0  # seconds between reads of every pending message, not only the newest
QUEUED = "queued"
LIMITER_AWAY = "limiter"  # Result.code of a relay the limiter could not let go (Redis down)  # the turn's holder when a wake is queued but not started


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
    """A message in its conversation's queue, in memory."""

    id: int
    sent_at_ms: int
    received_at: float
    not_before: float | None

    def key(self) -> tuple[int, int]:
        return self.sent_at_ms, self.id


@dataclass
class Claimed:
    """A message this relayer holds, with the ids the other side knows."""

    row: Any
    conv: tuple[str, str]
    head: Waiting
    sender: str
    to: str
    original: Any = None  # a recall's recalled message (state, target_msg_id, target_sent_at_ms)


class ClaimLost(Exception):
    """The message is no longer this relayer's (its turn ran out and another
    took it over): its call must not be made."""


class Marks:
    """Marks messages `sent_at` once the limiter lets their calls go, many in
    one transaction (a group commit): each send waits for its mark to be
    written before its call is made, and is not made when its claim is gone."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.waiting: list[tuple[int, str, asyncio.Future]] = []
        self.flusher: asyncio.Task | None = None

    async def mark(self, mid: int, claim: str) -> None:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((mid, claim, done))
        if self.flusher is None:
            self.flusher = asyncio.ensure_future(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    marked = await asyncio.to_thread(self._write, [(mid, claim) for mid, claim, _ in batch])
                except Exception as exc:  # the sends wait for this: they fail, never unmarked
                    for _, _, done in batch:
                        done.set_exception(exc)
                    continue
                for mid, _, done in batch:
                    if mid in marked:
                        done.set_result(None)
                    else:
                        done.set_exception(ClaimLost(f"message {mid} was taken over"))
        finally:
            self.flusher = None

    def _write(self, claims: list[tuple[int, str]]) -> set[int]:
        """Mark the messages still held under their claims; the ids marked.
        One statement per claim (a round's claims share one token)."""
        marked: set[int] = set()
        with self.engine.begin() as conn:
            for claim in {c for _, c in claims}:
                ids = [mid for mid, c in claims if c == claim]
                marked |= set(conn.execute(
                    update(messages).where(messages.c.id.in_(ids), messages.c.claim == claim)
                    .values(sent_at=time.time()).returning(messages.c.id)).scalars())
        return marked


class Relayer:
    """Relays one bridge while it holds the bridge's turn. Each round: read
    the messages stored since the last, claim the due first message of each
    idle conversation (one transaction), send them, and record what came
    back (one transaction)."""

    def __init__(self, runtime: Runtime, bridge: Any, me: str):
        self.runtime, self.bridge, self.me = runtime, bridge, me
        self.queues: dict[tuple[str, str], list[Waiting]] = {}
        self.busy: set[tuple[str, str]] = set()
        self.known: set[int] = set()  # ids in the queues
        self.seen = 0  # the highest id read
        self.chain: list[int] = [bridge.run_id]
        self.marks = Marks(runtime.engine)
        self.repeat_safe: dict[str, bool] = {}  # per app: whether a send to it may be repeated
        self.mapped: dict[tuple[bool, str, str], str] = {}  # (forward, kind, id) -> the other side's

    @property
    def bid(self) -> int:
        return self.bridge.id

    def _db(self, work):
        return asyncio.to_thread(_begin, self.runtime, work)

    def target_of(self, from_app: str) -> str:
        return self.bridge.app if from_app == self.bridge.source_app else self.bridge.source_app

    # reading ---------------------------------------------------------------------------

    def _recover(self, conn: Connection) -> None:
        """Messages a dead relayer held: not let go yet -> pending; maybe sent ->
        `unknown`, or pending again where the target drops a repeated send."""
        held = conn.execute(select(messages.c.id, messages.c.from_app, messages.c.sent_at).where(
            messages.c.bridge_id == self.bid, messages.c.state == "claimed")).all()
        for row in held:
            if row.sent_at is None or self.repeat_safe[self.target_of(row.from_app)]:
                values = {"state": ItemState.PENDING.value, "claim": None}
            else:
                values = {"state": ItemState.UNKNOWN.value, "claim": None, "code": "unknown",
                          "message": "the relayer stopped after the send went out and before its "
                                     "answer: it may have been delivered, so it is not sent again"}
            conn.execute(update(messages).where(messages.c.id == row.id).values(**values))

    def _read(self, conn: Connection, everything: bool) -> list[Any]:
        """Pending messages not in the queues yet: those stored since the last
        read, or (`everything`) all of them, for ids PostgreSQL's sequence
        handed out before a slower transaction committed."""
        query = select(messages.c.id, messages.c.from_app, messages.c.conversation, messages.c.sent_at_ms,
                       messages.c.received_at, messages.c.not_before).where(
            messages.c.bridge_id == self.bid, messages.c.state == ItemState.PENDING.value)
        if not everything:
            query = query.where(messages.c.id > self.seen)
        return list(conn.execute(query.order_by(messages.c.id).limit(50_000)).all())

    def _queue(self, rows: list[Any]) -> None:
        for r in rows:
            self.seen = max(self.seen, r.id)
            if r.id in self.known:
                continue
            self.known.add(r.id)
            bisect.insort(self.queues.setdefault((r.from_app, r.conversation), []),
                          Waiting(r.id, r.sent_at_ms, r.received_at, r.not_before), key=Waiting.key)

    # the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        started = renewed = rescanned = time.time()
        # Read here, on the loop: the database steps run in threads, where no client is made.
        self.repeat_safe = {app: self.runtime.client(app).repeat_safe(Operation.SEND)
                            for app in (self.bridge.source_app, self.bridge.app)}
        await self._db(self._recover)
        self.chain = await self._db(lambda conn: run_chain(conn, self.bridge.run_id))
        idle_since: float | None = None
        # Sends in flight, and the answers come back since the last record: each
        # send hands in its own (asyncio.wait over every send in flight, each
        # round, took 6% of the server's CPU with a few hundred in flight).
        inflight: set[asyncio.Future] = set()
        finished: list[tuple[Claimed, Result]] = []
        landed = asyncio.Event()

        def land(task: asyncio.Future) -> None:
            inflight.discard(task)
            if not task.cancelled() and task.exception() is None:
                finished.append(task.result())
            landed.set()  # also for one that raised: the loop below must not wait for it

        async def record() -> None:
            landed.clear()
            answers = finished[:]
            del finished[:len(answers)]
            await self._record_all(answers)

        while time.time() - started < RUN_FOR:
            everything = time.time() - rescanned > RESCAN
            if everything:
                rescanned = time.time()
            self._queue(await self._db(partial(self._read, everything=everything)))
            now = time.time()
            free = self.runtime.tuning.concurrency - len(inflight) - len(finished)
            heads = [(conv, q[0]) for conv, q in self.queues.items()
                     if q and conv not in self.busy and self._due(q[0], now)][:max(0, free)]
            if heads:
                for conv, _ in heads:
                    self.busy.add(conv)
                claimed, settled = await self._db(partial(self._claim, heads=heads))
                self._settle(settled)
                for c in claimed:
                    task = asyncio.ensure_future(self._send_one(c))
                    inflight.add(task)
                    task.add_done_callback(land)
            if inflight or finished:
                idle_since = None
                if not finished:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(landed.wait(), POLL)
                await record()
            elif any(self.queues.values()):
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
        while inflight or finished:  # the turn ends: what is on its way is recorded first
            if not finished:
                await landed.wait()
            await record()

    def _due(self, head: Waiting, now: float) -> bool:
        return head.received_at + self.bridge.settle <= now and (head.not_before or 0) <= now

    def _renew(self, conn: Connection) -> bool:
        return conn.execute(update(bridges).where(
            bridges.c.id == self.bid, bridges.c.relayer == self.me,
            bridges.c.status == BridgeStatus.ACTIVE.value)
            .values(relayer_until=time.time() + TURN)).rowcount == 1

    def _settle(self, settled: list[tuple[tuple[str, str], Waiting, float | None]]) -> None:
        """After a round: a message done leaves its queue; one to try again
        stays first, until `not_before`. Its conversation is free again."""
        for conv, head, again in settled:
            queue = self.queues.get(conv, [])
            if again is None:
                if queue and queue[0] is head:
                    queue.pop(0)
                self.known.discard(head.id)
                if not queue:
                    self.queues.pop(conv, None)
            else:
                head.not_before = again
            self.busy.discard(conv)

    # claiming --------------------------------------------------------------------------

    def _claim(self, conn: Connection, heads: list[tuple[tuple[str, str], Waiting]]):
        """Map the heads' ids, then claim them, in one transaction whose
        reads come first, so the write lock is held only for the writes:
        (the claimed, what was settled at once: held, failed unmapped, or no
        longer pending)."""
        token = uuid.uuid4().hex
        by_id = {head.id: (conv, head) for conv, head in heads}
        rows = self._drop_echoes(conn, list(conn.execute(select(messages).where(
            messages.c.id.in_(list(by_id)), messages.c.state == ItemState.PENDING.value))))
        found = self._mapped(conn, rows)
        originals = self._originals(conn, [r for r in rows if r.kind == "recall"])
        claimed, held = [], []
        for row in rows:
            conv, head = by_id[row.id]
            sender, to = found(row)
            missing = (f"user {row.sender}" if sender is None else
                       f"{'group' if row.is_group else 'user'} {row.to}" if to is None else None)
            if missing:
                held.append((conv, head, row, missing))
            else:
                claimed.append(Claimed(row, conv, head, sender, to, originals.get(row.id)))
        taken = set(conn.execute(update(messages).where(
            messages.c.id.in_([c.row.id for c in claimed]), messages.c.state == ItemState.PENDING.value)
            .values(state="claimed", claim=token, sent_at=None,
                    lease_until=time.time() + self.runtime.tuning.lease_seconds)
            .returning(messages.c.id)).scalars()) if claimed else set()
        claimed = [replace(c, row=_with_claim(c.row, token)) for c in claimed if c.row.id in taken]
        held_ids = {row.id for _, _, row, _ in held}
        settled: list[tuple[tuple[str, str], Waiting, float | None]] = [
            (conv, head, None) for mid, (conv, head) in by_id.items()
            if mid not in taken and mid not in held_ids]  # resolved meanwhile
        settled += [(conv, head, self._hold(conn, row, what)) for conv, head, row, what in held]
        return claimed, settled

    def _drop_echoes(self, conn: Connection, rows: list[Any]) -> list[Any]:
        """The rows less those this bridge relayed itself, whose feed event
        came in before the relay's answer was recorded, so `receive`
        (jobs/bridges.py) could not know them: OpenIM's revoke webhook, which
        carries no mark, can beat the revoke's own answer. Dropped and counted
        as echoes, as `receive` drops those it knows."""
        if not rows:
            return rows
        ours = {(r.from_app, r.target_msg_id) for r in conn.execute(
            select(messages.c.from_app, messages.c.target_msg_id).where(
                messages.c.bridge_id == self.bid, messages.c.target_msg_id.in_([r.msg_id for r in rows])))}
        echoes = [r for r in rows if (self.target_of(r.from_app), r.msg_id) in ours]
        if echoes:
            conn.execute(messages.delete().where(messages.c.id.in_([r.id for r in echoes])))
            for app in {r.from_app for r in echoes}:
                count(conn, app, "echoes", sum(r.from_app == app for r in echoes))
        dropped = {r.id for r in echoes}
        return [r for r in rows if r.id not in dropped]

    def _mapped(self, conn: Connection, rows: list[Any]):
        """(sender, to) as the other side knows them, per row (None where
        unmapped). Ids found are kept for the turn: a run's map only grows."""
        cache = self.mapped
        for forward in (True, False):
            side = [r for r in rows if (r.from_app == self.bridge.source_app) == forward]
            wanted = {("user", i) for r in side for i in ((r.sender,) if r.is_group else (r.sender, r.to))}
            wanted |= {("group", r.to) for r in side if r.is_group}
            for kind in ("user", "group"):
                ids = {i for k, i in wanted if k == kind and (forward, kind, i) not in cache}
                cache.update(((forward, kind, s), t) for s, t in
                             map_ids(conn, self.chain, kind, ids, forward).items())

        def found(row: Any) -> tuple[str | None, str | None]:
            forward = row.from_app == self.bridge.source_app
            return (cache.get((forward, "user", row.sender)),
                    cache.get((forward, "group" if row.is_group else "user", row.to)))

        return found

    def _originals(self, conn: Connection, recalls: list[Any]) -> dict[int, Any]:
        out = {}
        for row in recalls:
            out[row.id] = conn.execute(select(
                messages.c.state, messages.c.target_msg_id, messages.c.target_sent_at_ms).where(
                messages.c.bridge_id == self.bid, messages.c.from_app == row.from_app,
                messages.c.msg_id == (row.content or {}).get("recalls"))).first()
        return out

    def _hold(self, conn: Connection, row: Any, what: str) -> float | None:
        """Wait for an id the run has not mapped yet, up to the bridge's hold;
        then fail naming it. When to look again (None: failed)."""
        now = time.time()
        run = f"R{self.bridge.run_id}"
        if now - row.received_at < self.bridge.hold:
            again = now + HELD_RETRY
            conn.execute(update(messages).where(messages.c.id == row.id)
                         .values(state=ItemState.PENDING.value, claim=None, code="held", not_before=again,
                                 message=f"held: {what} is not in run {run}'s id map yet"))
            return again
        conn.execute(update(messages).where(messages.c.id == row.id)
                     .values(state=ItemState.FAILED.value, claim=None, code="unmapped",
                             message=f"{what} is not in the id map of run {run} or its delta runs "
                                     f"(held {self.bridge.hold:.0f} s): migrate it (`imshift migrate run "
                                     f"... --since {run}`), then it is relayed from then on"))
        return None

    # sending ---------------------------------------------------------------------------

    async def _send_one(self, c: Claimed) -> tuple[Claimed, Result]:
        row = c.row
        source = FeedMessage(msg_id=row.msg_id, sender=c.sender, to=c.to, group=row.is_group,
                             sent_at_ms=row.sent_at_ms, kind=row.kind, **_content(row.content))
        client = self.runtime.client(self.target_of(row.from_app))
        try:
            if row.kind not in KINDS:
                return c, Result(Outcome.REJECTED, "kind",
                                 f"a {row.kind} message cannot be relayed (the bridge carries "
                                 f"{', '.join(k for k in KINDS if k != 'recall')} and recalls)")
            if row.kind == "recall":
                return c, await self._recall(client, source, c.original)
            return c, await self._send(client, source, row)
        except Exception as exc:  # a client bug: the message is kept, not lost
            log.exception("bridge B%s: relaying message %s failed", self.bid, row.id)
            return c, Result(Outcome.RETRYABLE, "client-error", type(exc).__name__, maybe_delivered=True)

    async def _send(self, client, source: FeedMessage, row: Any) -> Result:
        announced = False

        async def mark() -> None:
            nonlocal announced
            if not announced:
                await self.marks.mark(row.id, row.claim)
                announced = True

        before_send.set(mark)
        urgent.set(True)
        try:
            async with self.runtime.gate():
                return await client.relay(source, dedup_key=dedup_key(self.bid, row.from_app, row.msg_id))
        except RedisError as exc:  # the shared rate limiter is away: the call was never made
            return Result(Outcome.RETRYABLE, LIMITER_AWAY, f"the rate limiter's Redis: {type(exc).__name__}")
        except Exception as exc:  # a client bug, or the mark could not be written
            log.exception("bridge B%s: relay call failed", self.bid)
            return Result(Outcome.RETRYABLE, "client-error", type(exc).__name__, maybe_delivered=announced)
        finally:
            before_send.set(None)
            urgent.set(False)

    async def _recall(self, client, source: FeedMessage, original: Any) -> Result:
        if original is None or original.state != ItemState.OK.value or not original.target_msg_id:
            state = "not stored" if original is None else original.state
            return Result(Outcome.REJECTED, "not-relayed",
                          f"the recalled message {source.recalls} was not relayed ({state}): nothing to take back")
        if not client.recalls:
            return Result(Outcome.REJECTED, "unsupported",
                          f"{client.vendor} has no server-side recall: the recall is not relayed")
        # The recall names the relayed message as the target knows it: its id and time.
        relayed = replace(source, sent_at_ms=original.target_sent_at_ms or source.sent_at_ms)
        urgent.set(True)
        try:
            async with self.runtime.gate():
                return await client.recall(relayed, original.target_msg_id)
        finally:
            urgent.set(False)

    # recording -------------------------------------------------------------------------

    async def _record_all(self, finished: list[tuple[Claimed, Result]]) -> None:
        if not finished:
            return
        answers = [(c, r, self._outcome(c.row, r)) for c, r in finished]
        await self._db(lambda conn: self._write(conn, answers))
        self._settle([(c.conv, c.head, values["b_not_before"] if values["b_state"] == ItemState.PENDING.value
                       else None) for c, _, values in answers])
        for c, result, _ in answers:
            if result.outcome is Outcome.RATE_LIMITED:
                op = Operation.SEND_GROUP if c.row.is_group else Operation.SEND
                await self.runtime.limiter.slow_down(self.target_of(c.row.from_app), op.value,
                                                     result.retry_after)

    def _outcome(self, row: Any, result: Result) -> dict[str, Any]:
        """What the answer makes of the message: the values its row gets."""
        now = time.time()
        target = self.target_of(row.from_app)
        # A call our own limiter kept back (its Redis away) was no attempt at the vendor.
        attempts = row.attempts + (result.code != LIMITER_AWAY)
        v: dict[str, Any] = {"b_id": row.id, "b_claim": row.claim, "b_attempts": attempts,
                             "b_code": result.code, "b_message": result.message, "b_not_before": None,
                             "b_relayed_at": None, "b_target_msg_id": None, "b_target_sent_at_ms": None}
        if result.succeeded:
            sent = result.data.get("sent_at_ms")
            v.update(b_state=ItemState.OK.value, b_relayed_at=now,
                     b_target_msg_id=str(result.data.get("msg_id") or "") or None,
                     b_target_sent_at_ms=int(sent) if sent is not None else None)
        elif result.outcome is Outcome.REJECTED:
            v["b_state"] = ItemState.REJECTED.value
        elif result.maybe_delivered and not self.repeat_safe[target]:
            v.update(b_state=ItemState.UNKNOWN.value,
                     b_message=f"{result.message}; it may have been delivered, so it is not sent again")
        elif result.outcome is Outcome.AUTH:
            v.update(b_state=ItemState.PENDING.value, b_not_before=now + 1.0,
                     b_stop=f"{target} refused the credentials: {result.code} {result.message}; fix "
                            f"them, then `imshift bridge resume B{self.bid}`")
        elif attempts >= self.runtime.tuning.max_attempts:
            v["b_state"] = ItemState.FAILED.value
        else:
            v.update(b_state=ItemState.PENDING.value,
                     b_not_before=now + (result.retry_after or min(30.0, 0.5 * 2 ** attempts)))
        return v

    def _write(self, conn: Connection, answers: list[tuple[Claimed, Result, dict[str, Any]]]) -> None:
        """Every answer of the round in one statement (executemany); a refusal
        of our credentials stops the bridge."""
        rows = [values for _, _, values in answers]
        conn.execute(_RECORD, [{k: v for k, v in r.items() if k != "b_stop"} for r in rows])
        stop = next((r["b_stop"] for r in rows if "b_stop" in r), None)
        if stop:
            conn.execute(update(bridges).where(bridges.c.id == self.bid,
                                               bridges.c.status == BridgeStatus.ACTIVE.value)
                         .values(status=BridgeStatus.STOPPED.value, stop_reason=stop))


# One statement for a round's answers; a message to be tried again is
# pending with no send mark (it never went out, or may be repeated).
_RECORD = (update(messages).where(messages.c.id == bindparam("b_id"), messages.c.claim == bindparam("b_claim"))
           .values(state=bindparam("b_state"), claim=None, attempts=bindparam("b_attempts"),
                   code=bindparam("b_code"), message=bindparam("b_message"),
                   not_before=bindparam("b_not_before"), relayed_at=bindparam("b_relayed_at"),
                   target_msg_id=bindparam("b_target_msg_id"),
                   target_sent_at_ms=bindparam("b_target_sent_at_ms"),
                   sent_at=case((bindparam("b_state") == ItemState.PENDING.value, None),
                                else_=messages.c.sent_at)))


def _with_claim(row: Any, token: str) -> Any:
    """The row as claimed (its claim token is what a record must match)."""
    values = dict(row._mapping)
    values["claim"] = token
    return SimpleNamespace(**values)


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
    relayer = Relayer(runtime, bridge, me)
    try:
        await relayer.run()
    finally:
        more = await asyncio.to_thread(_begin, runtime, lambda conn: _end_turn(conn, bid, me))
        if more:
            runtime.broker.actors["relay_bridge"].send(bid)


def _begin(runtime: Runtime, work):
    """`work(conn)` in one transaction (run in a thread: it blocks)."""
    with runtime.engine.begin() as conn:
        return work(conn)


def _end_turn(conn: Connection, bid: int, me: str) -> bool:
    """Give the turn back; True when messages wait and a wake was queued for them."""
    _give_back(conn, bid, me)
    waiting = conn.execute(select(messages.c.id).where(
        messages.c.bridge_id == bid, messages.c.state == ItemState.PENDING.value).limit(1)).first()
    return waiting is not None and wake_needed(conn, bid, time.time())


def stale_bridges(conn: Connection, now: float) -> list[int]:
    """Active bridges with messages waiting whose turn nobody holds (a lost
    wake, a dead relayer, a resume from another process): the ones to wake.
    The bridges first (a handful), then one indexed look each."""
    idle = conn.execute(select(bridges.c.id).where(
        bridges.c.status == BridgeStatus.ACTIVE.value,
        or_(bridges.c.relayer_until.is_(None), bridges.c.relayer_until < now))).scalars().all()
    return [bid for bid in idle if conn.execute(select(messages.c.id).where(
        messages.c.bridge_id == bid,
        messages.c.state.in_((ItemState.PENDING.value, "claimed"))).limit(1)).first() is not None]
