"""The tables: a job, its items, and the running per-state counts that keep
progress queries cheap on a million-item job."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

if TYPE_CHECKING:
    class _Tabled(SQLModel):
        """SQLModel: what a table=True model has, which its types do not declare."""
        __table__: ClassVar[Table]
else:
    _Tabled = SQLModel


class JobStatus(str, enum.Enum):
    PLANNING = "planning"  # items are being stored; not yet runnable
    PLANNED = "planned"  # a dry run: stored and checked, waiting for `imshift start`
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # the vendor refused our credentials: fix them, then resume
    CANCELLED = "cancelled"
    FINISHED = "finished"

    def __str__(self) -> str:
        return self.value


class ItemState(str, enum.Enum):
    PENDING = "pending"
    CLAIMED = "claimed"  # a worker holds it until lease_until
    OK = "ok"
    EXISTS = "exists"
    REJECTED = "rejected"  # the input or the vendor said no: never retried by itself
    FAILED = "failed"  # retryable failures outlasted the attempt budget
    UNKNOWN = "unknown"  # a send may have gone out but was never recorded
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a run's later stage: what it needs (an account, a group) did not make it

    def __str__(self) -> str:
        return self.value


def now() -> float:
    return time.time()


# Ids are never reused: `results 1` always means the same job, even after a
# job or run was removed (SQLite reuses the highest rowid without AUTOINCREMENT;
# PostgreSQL's sequences never go back).
NEVER_REUSED = {"sqlite_autoincrement": True}


class Job(_Tabled, table=True):
    __tablename__ = "jobs"
    __table_args__ = NEVER_REUSED

    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str  # "migrate_users", "refresh_tokens", "send"
    operation: str  # the vendor Operation its items run
    app: str  # the configured vendor app it runs against (a name, never its credentials)
    source_app: Optional[str] = None
    status: str = Field(default=JobStatus.PLANNING.value)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    total: int = 0
    stop_reason: Optional[str] = None
    created_at: float = Field(default_factory=now)
    touched_at: Optional[float] = None  # last recorded progress; a stale running job is re-sent
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    # Embedded mode: the command process running the job ("host:pid") and its
    # last heartbeat, so `resume` can take over from a runner that is gone.
    runner: Optional[str] = None
    runner_seen_at: Optional[float] = None
    # A migration run's stage (None for a job of its own): stages start in
    # order, each when the one before it has finished.
    run_id: Optional[int] = Field(default=None, foreign_key="runs.id", index=True)
    stage: Optional[str] = None


class Item(_Tabled, table=True):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "key", name="uq_items_job_key"),
        Index("ix_items_job_state", "job_id", "state", "seq"),
    )

    job_id: int = Field(foreign_key="jobs.id", primary_key=True)
    seq: int = Field(primary_key=True)  # 0..total-1 in input order; chunks are seq ranges
    key: str  # the user id or recipient: unique per job
    row: int  # where it came from in the input (line or row number), for error messages
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=ItemState.PENDING.value)
    attempts: int = 0
    code: Optional[str] = None  # the vendor's raw code, or "invalid"/"duplicate" from planning
    message: Optional[str] = None
    result: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    secret: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary))  # encrypted token
    claim: Optional[str] = None  # who holds it: a recorded outcome must come from the holder
    claimed_at: Optional[float] = None  # when the last attempt began
    lease_until: Optional[float] = None
    # Set when a call that is not safe to repeat was let go by the rate
    # limiter: only such an item may have reached the vendor unrecorded.
    sent_at: Optional[float] = None
    not_before: Optional[float] = None  # retry backoff: not claimed before this time
    updated_at: Optional[float] = None


class JobCount(_Tabled, table=True):
    """Items per state, updated in the same transaction as the items."""

    __tablename__ = "job_counts"

    job_id: int = Field(foreign_key="jobs.id", primary_key=True)
    state: str = Field(primary_key=True)
    n: int = 0


class Run(_Tabled, table=True):
    """A migration from one app to another as stages (accounts, friends,
    groups, members, tokens, verify), each a job. Its status follows theirs;
    `params` name the inputs and options (never a secret)."""

    __tablename__ = "runs"
    __table_args__ = NEVER_REUSED

    id: Optional[int] = Field(default=None, primary_key=True)
    source_app: str
    app: str  # the target
    status: str = Field(default=JobStatus.PLANNING.value)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    since: Optional[int] = Field(default=None, foreign_key="runs.id")  # a delta re-run's earlier run
    created_at: float = Field(default_factory=now)
    finished_at: Optional[float] = None
    # Accounts listed from the source: the cursor after the last page stored
    # (in that page's transaction) and "listing" / "listed" (the last page
    # is in), so a planning cut off mid-listing carries on from there.
    list_cursor: Optional[str] = None
    list_state: Optional[str] = None
    # The same for its groups listed from the source (no groups file): the
    # pages are kept in listed_groups until the run is planned whole.
    group_cursor: Optional[str] = None
    group_state: Optional[str] = None
    # The process planning the run ("host:pid") and its heartbeat.
    planner: Optional[str] = None
    planner_seen_at: Optional[float] = None


class ListedGroup(_Tabled, table=True):
    """A group a run read from its source (no groups file), as the row a
    groups.jsonl line would be; a page of them is stored with the run's
    group_cursor in one transaction, and they are deleted once the run is
    planned whole."""

    __tablename__ = "listed_groups"
    __table_args__ = (UniqueConstraint("run_id", "group_id", name="uq_listed_groups_run_group"),)

    run_id: int = Field(foreign_key="runs.id", primary_key=True)
    seq: int = Field(primary_key=True)  # its place in the listing, from 1
    group_id: str
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class IdMap(_Tabled, table=True):
    """Source id -> target id, per run, for users and groups: filled in the
    transaction that records the target's answer, read by every later stage."""

    __tablename__ = "id_map"

    run_id: int = Field(foreign_key="runs.id", primary_key=True)
    kind: str = Field(primary_key=True)  # "user" or "group"
    source_id: str = Field(primary_key=True)
    target_id: str


class ScheduleStatus(str, enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"  # no fires until resumed
    DONE = "done"  # a one-off that fired (or was missed)
    REMOVED = "removed"  # kept for its history

    def __str__(self) -> str:
        return self.value


class Schedule(_Tabled, table=True):
    """A send or broadcast to run at a time (`at`) or on a cron expression,
    read in zone `tz`. `params` are the command's parameters (app, sender,
    the message, the recipient file's path): never a secret."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_due", "status", "next_at"), NEVER_REUSED)

    id: Optional[int] = Field(default=None, primary_key=True)
    command: str  # "send", "send_group" or "broadcast"
    app: str
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: Optional[float] = None  # a one-off's fire time (epoch seconds)
    cron: Optional[str] = None
    tz: str = "UTC"
    catch_up: float = 900.0  # seconds: a fire later than this after its time is `missed`
    status: str = Field(default=ScheduleStatus.ACTIVE.value)
    next_at: Optional[float] = None  # the next fire time; None once nothing is left to fire
    created_at: float = Field(default_factory=now)


class ScheduleFire(_Tabled, table=True):
    """One fire of a schedule, unique per (schedule, fire time): inserted in
    the transaction that makes its job the fire's, so it happens once."""

    __tablename__ = "schedule_fires"
    __table_args__ = (UniqueConstraint("schedule_id", "fire_at", name="uq_fires_schedule_time"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    schedule_id: int = Field(foreign_key="schedules.id", index=True)
    fire_at: float  # the time it was due (epoch seconds), not when it ran
    state: str  # "fired", "missed" or "failed" (the job could not be made: the reason is in note)
    job_id: Optional[int] = Field(default=None, foreign_key="jobs.id")
    note: Optional[str] = None
    created_at: float = Field(default_factory=now)


class BridgeStatus(str, enum.Enum):
    ACTIVE = "active"  # feed deliveries are stored and relayed
    PAUSED = "paused"  # deliveries are stored, nothing is relayed until resumed
    STOPPED = "stopped"  # the target refused our credentials: fix them, then resume
    REMOVED = "removed"  # deliveries are refused; kept for its history

    def __str__(self) -> str:
        return self.value


class Bridge(_Tabled, table=True):
    """Keeps users of `source_app` (the old vendor) and `app` (the new one)
    talking during a cut-over: each message one side's feed reports is
    relayed to the other, ids through run `run_id`'s id map (and its delta
    re-runs'). One way (old -> new) unless `both_ways`."""

    __tablename__ = "bridges"
    __table_args__ = {"sqlite_autoincrement": True}  # a removed bridge's id is never reused

    id: Optional[int] = Field(default=None, primary_key=True)
    source_app: str
    app: str
    run_id: int = Field(foreign_key="runs.id")
    both_ways: bool = False
    hold: float = 600.0  # seconds a message waits for an id the run has not mapped yet
    settle: float = 0.3  # seconds a message waits for an earlier one delivered late (order)
    status: str = Field(default=BridgeStatus.ACTIVE.value)
    stop_reason: Optional[str] = None
    created_at: float = Field(default_factory=now)
    # The process relaying it and until when it holds the turn (one relayer a bridge).
    relayer: Optional[str] = None
    relayer_until: Optional[float] = None


class BridgeMessage(_Tabled, table=True):
    """One message a feed reported, stored before the delivery is answered:
    unique per (bridge, sending app, the vendor's message id), so a repeated
    delivery is dropped. Relayed in (sent_at_ms, id) order per conversation."""

    __tablename__ = "bridge_messages"
    __table_args__ = (UniqueConstraint("bridge_id", "from_app", "msg_id", name="uq_bridge_messages_msg"),
                      Index("ix_bridge_messages_work", "bridge_id", "state", "sent_at_ms"),
                      Index("ix_bridge_messages_target", "bridge_id", "target_msg_id"),
                      {"sqlite_autoincrement": True})

    id: Optional[int] = Field(default=None, primary_key=True)
    bridge_id: int = Field(foreign_key="bridges.id")
    from_app: str  # the side that sent it: relayed to the other
    msg_id: str
    conversation: str  # feeds.FeedMessage.conversation
    sender: str
    to: str
    is_group: bool = False
    sent_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))  # ms: past 32 bits
    kind: str
    content: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=ItemState.PENDING.value)  # pending, claimed, ok, rejected, failed, unknown
    attempts: int = 0
    code: Optional[str] = None
    message: Optional[str] = None
    claim: Optional[str] = None
    lease_until: Optional[float] = None
    sent_at: Optional[float] = None  # the limiter let its call go: it may have reached the target
    not_before: Optional[float] = None
    target_msg_id: Optional[str] = None
    # The target's time of the relayed message, which its recall call names (NetEase, RongCloud).
    target_sent_at_ms: Optional[int] = Field(default=None, sa_column=Column(BigInteger))
    received_at: float = Field(default_factory=now)
    relayed_at: Optional[float] = None  # when the target accepted it


class FeedCount(_Tabled, table=True):
    """Deliveries that stored nothing, per app and why: duplicates dropped,
    echoes of the bridge's own sends, refused (signature, age, body), ignored
    (not a message)."""

    __tablename__ = "feed_counts"

    app: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    n: int = 0
