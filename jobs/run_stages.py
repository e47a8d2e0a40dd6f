"""The stages of a migration run as the planner makes them: each input
read, checked against the target's rules and the run's accounts, and
stored as the items of its stage's job (see jobs/runs.py for the run)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from imshift.models.runs import stage_jobs
from imshift.models.tables import Item, Job, JobStatus, Run
from imshift.vendors.operations import encode_group, encode_member, encode_pair
from imshift.vendors.vocabulary import Group, Operation

from .inputs import Row, read_rows
from .kinds import user_specs
from .listing import Page, Pages, listed_rows
from .plan import (BATCH, EXISTS, PENDING, NotOurs, PlanReport, Spec, batches, create_job, plan,
                   stored_report)
from .target import Target

runs = Run.__table__
items = Item.__table__
jobs = Job.__table__

OPERATIONS = {"accounts": Operation.REGISTER, "friends": Operation.IMPORT_FRIENDS,
              "groups": Operation.CREATE_GROUP, "members": Operation.ADD_MEMBERS,
              "tokens": Operation.ISSUE_TOKEN, "verify": Operation.GET_PROFILES}
GROUP_ID_COLUMNS = ("group_id", "groupid", "tid", "id")
FRIEND_COLUMNS = ("friend_id", "friendid", "friend", "faccid")
VERIFY_READS = {"profile": Operation.GET_PROFILES, "members": Operation.GET_MEMBERS,
                "friends": Operation.GET_FRIENDS}  # in the order verify's items come
PAIR = "↔"  # joins a friend pair's two ids in its item key


@dataclass
class StagePlan:
    stage: str
    job_id: int
    report: PlanReport
    calls: int
    seconds: float | None
    ignored_columns: list[str] = field(default_factory=list)


@dataclass
class _OwnerRuns:
    """The friends stage's calls: one per run of pairs of one owner (at most a batch)."""
    runs: int = 0
    last: str | None = None
    in_run: int = 0
    pairs: int = 0


class StagePlanner:
    def __init__(self, engine: Engine, run_id: int, source_app: str, target: Target,
                 chunk_size: int, progress: Callable[[str, int], None] | None, since: int | None):
        self.engine, self.run_id, self.source_app, self.target = engine, run_id, source_app, target
        self.chunk_size, self.progress, self.since = chunk_size, progress, since
        self.stages: list[StagePlan] = []
        self.me: str | None = None  # this planner (planning_lease.planner_id)
        self.kept: tuple[int, str] | None = None  # a cut-off planning's accounts job, carried on
        self.job_of: dict[str, int] = {}
        self.accounts_named = "the accounts (--users)"  # as a dangling reference's reason says
        self.earlier: dict[str, int] = {}  # the earlier run's stage jobs (a delta re-run)
        if since is not None:
            with engine.connect() as conn:
                self.earlier = {stage: job_id for stage, job_id, _ in stage_jobs(conn, since)}

    def _finished_earlier(self, stage: str, keys: set[str]) -> dict[str, Any]:
        """Which of `keys` the earlier run's `stage` finished (ok or exists), with their payloads."""
        job_id = self.earlier.get(stage)
        if job_id is None or not keys:
            return {}
        wanted = sorted(keys)
        found: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for lo in range(0, len(wanted), BATCH):
                found.update(conn.execute(select(items.c.key, items.c.payload).where(
                    items.c.job_id == job_id, items.c.key.in_(wanted[lo:lo + BATCH]),
                    items.c.state.in_(["ok", "exists"]))).all())
        return found

    def _mark_done(self, stage: str, specs: Iterable[Spec]) -> Iterable[Spec]:
        """A delta re-run's specs: what the earlier run finished is `done`.
        A first run's specs pass unchanged, so a columnar reader's SpecBatches
        keep their batch-at-a-time planning (jobs/plan.py)."""
        return specs if self.since is None else self._marked_done(stage, specs)

    def _marked_done(self, stage: str, specs: Iterable[Spec]) -> Iterator[Spec]:
        for batch in batches(specs, BATCH):
            finished = self._finished_earlier(stage, {s.key for s in batch if not s.problems})
            for spec in batch:
                if spec.key in finished and not spec.problems and spec.done is None:
                    spec.done = f"done by run R{self.since}"
                yield spec

    def _stage(self, stage: str, specs: Iterable[Spec], *, makes: str | None = None,
               user_ids: bool = False, calls: int | None = None, ignored: set[str] | None = None,
               job_id: int | None = None, checkpoint=None, marked: bool = False,
               **params: Any) -> StagePlan:
        """Plan a stage as a new job, or carry on `job_id` (a cut-off planning's)."""
        operation = OPERATIONS[stage]
        chunk = max(self.chunk_size, self.target.batch_size(operation))
        carry_on = job_id is not None
        if job_id is None:
            job_id = create_job(self.engine, kind=f"run_{stage}", operation=operation.value,
                                app=self.target.app, source_app=self.source_app, run_id=self.run_id,
                                stage=stage, params={"run": self.run_id, "stage": stage,
                                                     "chunk_size": chunk,
                                                     **({"makes": makes} if makes else {}), **params})
        rules = self.target.rules
        if stage != "verify" and not marked:
            specs = self._mark_done(stage, specs)
        progress = self.progress
        report = plan(self.engine, job_id, specs,
                      (lambda n: progress(stage, n)) if progress else None,
                      id_key=rules.id_key if rules.id_form and user_ids else None,
                      checkpoint=checkpoint, carry_on=carry_on)
        with self.engine.begin() as conn:  # planned, waiting for its turn
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=JobStatus.PLANNED.value))
        if calls is None:
            calls = self.target.calls(operation, report.pending)
        rate = self.target.rates.get(operation.value)
        planned = StagePlan(stage, job_id, report, calls, calls / rate if rate else None,
                            sorted(ignored or ()))
        self.stages.append(planned)
        self.job_of[stage] = job_id
        return planned

    def accounts(self, path: Path | None, pages: Pages | None) -> None:
        ignored: set[str] = set()
        if path is None:
            self.accounts_named = f"the accounts listed from {self.source_app}"
        if self.kept and self.kept[1] == JobStatus.PLANNED.value:  # planned whole before the cut
            self._kept_stage("accounts", self.kept[0])
            return
        if path is not None:
            self._stage("accounts", user_specs(read_rows(path), self.target, ignored), makes="user",
                        user_ids=True, ignored=ignored, input=str(path))
            return
        # Listed: from the cursor stored with the last page's rows (none: the start).
        if pages is None:
            raise ValueError("the accounts need a --users file or the source's listing")
        stored = 0
        with self.engine.connect() as conn:
            listing = conn.execute(select(runs.c.list_cursor, runs.c.list_state)
                                   .where(runs.c.id == self.run_id)).one()
            if self.kept:
                stored = stored_report(conn, self.kept[0]).total
        rows = iter(()) if listing.list_state == "listed" else \
            listed_rows(pages, listing.list_cursor, first_line=stored + 1)
        self._stage("accounts", user_specs(rows, self.target, ignored), makes="user", user_ids=True,
                    ignored=ignored, job_id=self.kept[0] if self.kept else None,
                    checkpoint=self._listed, input=f"listed from {self.source_app}")

    def _listed(self, conn, page: Page) -> None:
        """Store where the listing stands, with the page's rows (one transaction)."""
        if not conn.execute(update(runs).where(
                runs.c.id == self.run_id, runs.c.planner == self.me,
                runs.c.status == JobStatus.PLANNING.value)
                .values(list_cursor=page.cursor, list_state="listed" if page.last else "listing",
                        planner_seen_at=time.time())).rowcount:
            raise NotOurs(f"run R{self.run_id} was cancelled or taken over by another command "
                          "while its accounts were listed")

    def _kept_stage(self, stage: str, job_id: int) -> None:
        with self.engine.connect() as conn:
            report = stored_report(conn, job_id)
        calls = self.target.calls(OPERATIONS[stage], report.pending)
        rate = self.target.rates.get(OPERATIONS[stage].value)
        self.stages.append(StagePlan(stage, job_id, report, calls, calls / rate if rate else None))
        self.job_of[stage] = job_id

    def _known_users(self, keys: set[str]) -> set[str]:
        """Which of `keys` are accounts of this run (valid or not: one that
        fails is skipped later, with its reason)."""
        found: set[str] = set()
        wanted = sorted(keys)
        with self.engine.connect() as conn:
            for lo in range(0, len(wanted), BATCH):
                found.update(conn.execute(select(items.c.key).where(
                    items.c.job_id == self.job_of["accounts"],
                    items.c.key.in_(wanted[lo:lo + BATCH]))).scalars())
        return found

    def _checked_refs(self, specs: Iterator[tuple[Spec, list[tuple[str, str]]]]) -> Iterator[Spec]:
        """Specs whose user references (field, id) are looked up in the run's
        accounts a batch at a time: one naming an unknown user is rejected."""
        for batch in batches(specs, BATCH):
            known = self._known_users({uid for _, refs in batch for _, uid in refs})
            for spec, refs in batch:
                for name, uid in refs:
                    if uid not in known:
                        spec.problems.append(f"{name}: user {uid!r} is not in {self.accounts_named}")
                yield spec

    def friends(self, path: Path) -> None:
        form = self.target.rules.id_key
        batch = self.target.batch_size(Operation.IMPORT_FRIENDS)
        owners = _OwnerRuns()  # a call takes one owner's run of pairs

        def counted(user: str) -> None:
            if user != owners.last or owners.in_run >= batch:
                owners.runs, owners.last, owners.in_run = owners.runs + 1, user, 0
            owners.in_run += 1
            owners.pairs += 1

        def specs() -> Iterator[tuple[Spec, list[tuple[str, str]]]]:
            for row in read_rows(path):
                if row.problem:
                    yield Spec(row.line, f"#line{row.line}", problems=[row.problem]), []
                    continue
                user, friend = row.fields.get("key", ""), _first(row, FRIEND_COLUMNS)
                problems = [f"{n}: required" for n, v in (("user_id", user), ("friend_id", friend)) if not v]
                if user and friend and form(user) == form(friend):
                    problems.append("friend_id: a user cannot befriend themself")
                # A pair is one friendship whichever way round it is written.
                low, high = sorted((user, friend), key=form)
                yield (Spec(row.line, f"{low}{PAIR}{high}", encode_pair(user, friend), problems),
                       [] if problems else [("user_id", user), ("friend_id", friend)])

        def to_send(stream: Iterable[Spec]) -> Iterator[Spec]:
            # Counted once refused and done pairs are known: a delta run sends only the new ones.
            for spec in stream:
                if not spec.problems and spec.done is None:
                    counted(spec.payload["user_id"])
                yield spec

        planned = self._stage("friends", to_send(self._mark_done("friends", self._checked_refs(specs()))),
                              marked=True, user_ids=True, input=str(path))
        other_sides = owners.pairs if self.target.rules.friends_one_way else 0  # a call each
        self._recount(planned, owners.runs + other_sides)

    def _recount(self, planned: StagePlan, calls: int) -> None:
        """A stage whose calls are not items ÷ batch size (one per owner's run of pairs)."""
        rate = self.target.rates.get(OPERATIONS[planned.stage].value)
        planned.calls, planned.seconds = calls, (calls / rate if rate else None)

    def groups(self, path: Path | None, listed: Iterable[Row] | None = None) -> None:
        """The groups stage (owner and a first slice of members) and the
        members stage (the rest, one item per member), from groups.jsonl or
        the rows of the source's own listing (jobs/source_groups.py). A
        member the accounts do not hold becomes a rejected member item, not
        a reason to refuse its group; a group whose owner they do not hold
        is refused whole."""
        if listed is not None:
            rows, source = listed, f"listed from {self.source_app}"
        elif path is not None:
            rows, source = read_rows(path, key_columns=GROUP_ID_COLUMNS), str(path)
        else:
            raise ValueError("the groups need a groups file or the source's listing")
        first = self.target.batch_size(Operation.ADD_MEMBERS)
        limit = self.target.rules.group_size
        # row, group, owner, the members for the members stage, those unknown, those in already
        members_of: list[tuple[int, str, str, list[str], set[str], set[str]]] = []

        def specs() -> Iterator[Spec]:
            batch: list[tuple[Row, Spec, list[str]]] = []

            def flush() -> Iterator[Spec]:
                known = self._known_users({u for _, spec, members in batch
                                           for u in [spec.payload.get("owner", ""), *members]})
                made = self._finished_earlier("groups", {spec.key for _, spec, _ in batch})
                for row, spec, members in batch:
                    owner = spec.payload.get("owner", "")
                    if not spec.problems and owner not in known:
                        spec.problems.append(f"owner: user {owner!r} is not in {self.accounts_named}")
                    unknown = {m for m in members if m not in known}
                    kept = [m for m in members if m in known]
                    earlier = made.get(spec.key) if not spec.problems else None
                    if earlier is not None:  # made by the earlier run: only new members are added
                        spec.done = f"done by run R{self.since}"
                        spec.payload["members"] = earlier["members"]
                        rest, done = kept, set(earlier["members"])
                    else:
                        if not spec.problems:
                            spec.payload["members"] = kept[:first]
                        rest, done = kept[first:], set()
                    members_of.append((row.line, spec.key, owner, rest + sorted(unknown), unknown, done))
                    yield spec
                batch.clear()

            for row in rows:
                spec, members = _group_spec(row, limit)
                batch.append((row, spec, members))
                if len(batch) >= 500:
                    yield from flush()
            yield from flush()

        planned = self._stage("groups", specs(), makes="group", input=source)
        self._count_creates(planned)
        refused = self._refused(planned.job_id)
        calls = [0]  # the members stage's, a group at a time: the client adds each group's apart

        def member_specs() -> Iterator[Spec]:
            for line, group_id, owner, rest, unknown, done in members_of:
                sent = []
                for member in rest:
                    problems = ([f"group {group_id!r} was refused at planning"] if group_id in refused
                                else [f"member: user {member!r} is not in {self.accounts_named}"]
                                if member in unknown else [])
                    if not problems and member not in done:
                        sent.append(member)
                    yield Spec(line, f"{group_id}/{member}", encode_member(group_id, owner, member), problems,
                               done=f"done by run R{self.since}" if member in done else None)
                calls[0] += self.target.calls_for_ids(Operation.ADD_MEMBERS, sent) if sent else 0

        members = self._stage("members", member_specs(), input=source)
        self._recount(members, calls[0])

    def _count_creates(self, planned: StagePlan) -> None:
        """A group's create is its own call plus the add_members calls the
        client makes inside it for the first members that call cannot carry
        (NetEase's 1024 bytes of `members`, RongCloud's 1000 userIds), read
        from the groups the stage will send. Those adds wait for the
        add_members limiter, not create_group's. Seconds are the busier
        limit's, not the two added up: a group's adds follow its create, but
        several groups are in flight at once (the client's `each`, the
        claim budget of workers/chunk.py), so while some wait for add_members
        others' creates use create_group's quota; the stage's operations work
        at once, as bench/run.py's `need` counts them. Groups with adds
        bunched at the end of the input run past it (at most to the sum)."""
        if self.target.rules.adds_in_create is None or not planned.report.pending:
            return
        creates = planned.report.pending
        adds = sum(self.target.adds_in_create(r.payload["owner"], r.payload["members"])
                   for r in self._valid("groups", states=(PENDING,)))
        rates = self.target.rates
        create_rate = rates.get(Operation.CREATE_GROUP.value)
        add_rate = rates.get(Operation.ADD_MEMBERS.value)
        planned.calls = creates + adds
        planned.seconds = (None if not create_rate or (adds and not add_rate)
                           else max(creates / create_rate, adds / add_rate if adds and add_rate else 0.0))

    def _refused(self, job_id: int) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(items.c.key).where(
                items.c.job_id == job_id, items.c.state == "rejected")).scalars())

    def _valid(self, stage: str, states: tuple[str, ...] = (PENDING, EXISTS)) -> Iterator[Any]:
        """The valid items of an earlier stage (those in `states`), in order,
        a page at a time."""
        after = -1
        while True:
            with self.engine.connect() as conn:
                page = conn.execute(select(items.c.seq, items.c.key, items.c.row, items.c.payload).where(
                    items.c.job_id == self.job_of[stage], items.c.seq > after,
                    items.c.state.in_(states)).order_by(items.c.seq).limit(BATCH)).all()
            if not page:
                return
            yield from page
            after = page[-1].seq

    def tokens(self) -> None:
        self._stage("tokens", (Spec(r.row, r.key, {"user_id": r.key}) for r in self._valid("accounts")))

    def verify(self) -> None:
        """Profiles, then group members, then friends: each check is a read
        of its own operation (its own rate), so the job's params say where
        each one's items begin (`sections`), for the workers' claim budgets
        and this estimate."""
        kinds: dict[str, int] = {}

        def counted() -> Iterator[Spec]:
            for spec in self._checks():
                kinds[spec.payload["check"]] = kinds.get(spec.payload["check"], 0) + 1
                yield spec

        planned = self._stage("verify", counted())
        sections, first, calls = [], 0, 0
        seconds: float | None = 0.0
        for check, operation in VERIFY_READS.items():
            n = kinds.get(check, 0)
            if n:
                sections.append([first, operation.value])
                first += n
                rate = self.target.rates.get(operation.value)
                calls += self.target.calls(operation, n)
                seconds = None if not rate or seconds is None else seconds + self.target.calls(operation, n) / rate
        planned.calls, planned.seconds = calls, seconds
        with self.engine.begin() as conn:
            params = conn.execute(select(jobs.c.params).where(jobs.c.id == planned.job_id)).scalar_one()
            conn.execute(update(jobs).where(jobs.c.id == planned.job_id)
                         .values(params={**params, "sections": sections}))

    def _checks(self) -> Iterator[Spec]:
        caps = self.target.capabilities
        for r in self._valid("accounts"):
            p = r.payload
            yield Spec(r.row, r.key, {"check": "profile", "user_id": r.key,
                                      **{k: p[k] for k in ("name", "avatar") if p.get(k)}})
        if "groups" in self.job_of and Operation.GET_MEMBERS in caps:
            rest: dict[str, list[str]] = {}
            for r in self._valid("members"):
                rest.setdefault(r.payload["group_id"], []).append(r.payload["member"])
            for r in self._valid("groups"):
                members = r.payload["members"] + rest.pop(r.key, [])
                yield Spec(r.row, f"group:{r.key}", {"check": "members", "group_id": r.key,
                                                     "owner": r.payload["owner"], "members": members})
        if "friends" in self.job_of and Operation.GET_FRIENDS in caps:
            friends: dict[str, list[str]] = {}
            for r in self._valid("friends"):
                a, b = r.payload["user_id"], r.payload["friend_id"]
                friends.setdefault(a, []).append(b)
                friends.setdefault(b, []).append(a)
            for user, theirs in friends.items():
                yield Spec(0, f"friends:{user}", {"check": "friends", "user_id": user, "friends": theirs})


def _first(row: Row, columns: tuple[str, ...]) -> str:
    return next((row.fields[c] for c in columns if c in row.fields), "")


def _group_spec(row: Row, limit: int | None) -> tuple[Spec, list[str]]:
    """A groups.jsonl row as the create item (its members filled in once
    they are checked) and every member but the owner, in input order."""
    if row.problem:
        return Spec(row.line, f"#line{row.line}", problems=[row.problem]), []
    f = row.fields
    group_id, name, owner = f.get("key", ""), f.get("name", ""), f.get("owner", "")
    problems = [f"{n}: required" for n, v in (("group_id", group_id), ("name", name), ("owner", owner))
                if not v]
    try:
        members = json.loads(f.get("members", "[]"))
    except ValueError:
        members = None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        problems.append("members: not a JSON list of user ids")
        members = []
    members = [m for m in dict.fromkeys(members) if m != owner]
    if limit is not None and len(members) + 1 > limit:
        problems.append(f"members: {len(members) + 1} with the owner, the target allows at most {limit}")
    extra = {k: f[k] for k in ("avatar", "intro") if f.get(k)}
    payload = encode_group(Group(group_id, name, owner, []), **extra)
    return Spec(row.line, group_id or f"#line{row.line}", payload, problems), members


