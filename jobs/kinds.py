"""The kinds of job a user asks for, from input rows to planned items:
user migration (register with profile), token refresh, mass send, group
send and app-wide broadcast. Each is one producer; how its items are run is the operation table's
(imshift.vendors.operations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import orjson

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from imshift.models.db import json_text
from imshift.models.runs import runs, target_ids
from imshift.vendors.vocabulary import Message, Operation, Profile, VendorRules
from imshift.vendors.operations import encode_message, encode_profile

from .inputs import AVATAR_COLUMNS, NAME_COLUMNS, Row, RowBatch, Rows, read_rows
from .plan import BATCH, PlanReport, Spec, SpecBatch, SpecBatches, create_job, plan
from .target import Target

V = TypeVar("V")


@dataclass
class Planned:
    report: PlanReport
    ignored_columns: list[str] = field(default_factory=list)


def _first(fields: Mapping[str, V], names: tuple[str, ...], absent: V) -> tuple[V, str | None]:
    """The first of `names` in `fields` (a row's values, or a batch's columns), and its name."""
    for name in names:
        if name in fields:
            return fields[name], name
    return absent, None


def user_specs(rows: Iterator[Row], target: Target, ignored: set[str]) -> Iterable[Spec]:
    """Profiles checked against the target's rules. Columns the target has no
    field for are left out (and reported once), not held against each row.
    An unread CSV file (`Rows.columnar`) is read and checked a batch at a
    time, column by column (`_user_batches`): the same specs, for far less."""
    if isinstance(rows, Rows) and rows.columnar:
        return SpecBatches(_user_batches(rows.batches(BATCH), target.rules, ignored))
    return _user_specs(rows, target.rules, ignored)


def _user_specs(rows: Iterator[Row], rules: VendorRules, ignored: set[str]) -> Iterator[Spec]:
    for row in rows:
        if row.problem:
            yield Spec(row.line, f"#line{row.line}", problems=[row.problem], mark=row.mark)
            continue
        fields = dict(row.fields)
        key = fields.pop("key")
        name, name_col = _first(fields, NAME_COLUMNS, "")
        avatar, avatar_col = _first(fields, AVATAR_COLUMNS, "")
        extra = {}
        for column, value in fields.items():
            if column in (name_col, avatar_col) or not value:
                continue
            if column in rules.fields and column not in ("user_id", "name", "avatar"):
                extra[column] = value
            else:
                ignored.add(column)
        problems = rules.check_profile(Profile(key, name, avatar, extra))
        yield Spec(row.line, key or f"#line{row.line}", encode_profile(name, avatar, extra), problems,
                   mark=row.mark)


def _user_batches(batches: Iterator[RowBatch], rules: VendorRules,
                  ignored: set[str]) -> Iterator[SpecBatch]:
    """`_user_specs` a RowBatch at a time: the columns are sorted out once,
    each field's rule checks its whole column (FieldRule.check_many), and
    only the rows that fail are looked at one by one. A header that names a
    column twice goes row by row."""
    for batch in batches:
        if len(set(batch.names)) != len(batch.names):
            yield SpecBatch.of(list(_user_specs(_as_rows(batch), rules, ignored)))
            continue
        n = len(batch)
        column = dict(zip(batch.names, batch.columns, strict=False))
        keys = list(column.pop("key"))
        blank = [""] * n
        name, name_col = _first(column, NAME_COLUMNS, blank)
        avatar, avatar_col = _first(column, AVATAR_COLUMNS, blank)
        name, avatar = name or blank, avatar or blank
        extra = {}
        for col, values in column.items():
            if col in (name_col, avatar_col) or not any(values):
                continue
            if col in rules.fields and col not in ("user_id", "name", "avatar"):
                extra[col] = values
            else:
                ignored.add(col)
        # Every reason check_profile gives, field by field in its order.
        found: dict[int, list[str]] = {}
        for field_name, values, skip_empty in [("user_id", keys, False), ("name", name, False),
                                               ("avatar", avatar, False),
                                               *((c, v, True) for c, v in extra.items())]:
            rule = rules.fields.get(field_name)
            if rule is not None:
                reasons = rule.check_many(field_name, values, skip_empty=skip_empty)
            else:
                reasons = {i: f"{field_name}: not a profile field this vendor accepts"
                           for i, value in enumerate(values) if value}
            for i, reason in reasons.items():
                found.setdefault(i, []).append(reason)
        if extra:
            payloads = [json_text(encode_profile(nm, av, {c: v for c, v in zip(extra, vs, strict=False) if v}))
                        for nm, av, vs in zip(name, avatar, zip(*extra.values(), strict=False), strict=False)]
        else:
            payloads = _profile_payloads(name, avatar)
        lines = batch.lines
        for i in batch.problems:  # unreadable: as `_user_specs` makes them
            found[i] = [batch.problems[i]]
            payloads[i] = "{}"
        if "" in keys or batch.problems:
            for i in [i for i, key in enumerate(keys) if not key]:
                keys[i] = f"#line{lines[i]}"
            for i in batch.problems:
                keys[i] = f"#line{lines[i]}"
        yield SpecBatch(lines, keys, payloads, found)


def _profile_payloads(names: Sequence[str], avatars: Sequence[str]) -> list[str]:
    """json_text(encode_profile(name, avatar, {})) of each pair: the same
    text, with orjson called straight (values read from UTF-8 are always
    strings it takes) and no Python frame a row but the dict's."""
    return list(map(bytes.decode, map(orjson.dumps, map(_profile_payload, names, avatars))))


def _profile_payload(name: str, avatar: str) -> dict[str, str]:
    return {"name": name, "avatar": avatar}  # encode_profile with no extra fields


def _as_rows(batch: RowBatch) -> Iterator[Row]:
    for i, line in enumerate(batch.lines):
        if i in batch.problems:
            yield Row(line, problem=batch.problems[i])
        else:
            yield Row(line, {name: values[i] for name, values in zip(batch.names, batch.columns, strict=False)})


def id_specs(rows: Iterator[Row]) -> Iterator[Spec]:
    for row in rows:
        if row.problem:
            yield Spec(row.line, f"#line{row.line}", problems=[row.problem])
            continue
        key = row.fields.get("key", "")
        yield Spec(row.line, key or f"#line{row.line}", problems=[] if key else ["user_id: required"])


class ViaError(ValueError):
    """`--via R<n>` cannot map this send's ids: no such run, another target,
    or a sender the run did not migrate."""


@dataclass(frozen=True)
class Via:
    """The id map a send reads (`--via R<n>`): run `given`'s, or that of the
    latest delta run after it (`run`), which holds R<n>'s ids and those it added."""

    given: int
    run: int

    @property
    def missing(self) -> str:
        """Why an id has no target id: "not in run R1's id map"."""
        later = "" if self.run == self.given else f" (nor its delta run R{self.run}'s)"
        return f"not in run R{self.given}'s id map{later}"


def via_run(engine: Engine, given: int | None, app: str) -> Via | None:
    """The id map of run R<given> for a send through `app`; the run must
    have migrated into `app`. Raises ViaError."""
    if given is None:
        return None
    with engine.connect() as conn:
        target = conn.execute(select(runs.c.app).where(runs.c.id == given)).scalar()
        if target is None:
            raise ViaError(f"--via R{given}: there is no run R{given} (`imshift status` lists the runs)")
        if target != app:
            raise ViaError(f"--via R{given}: that run migrated into {target}, not {app}: give the "
                           f"run that migrated into {app}")
        run = given
        # A delta run copies the earlier run's map and adds to it: accounts
        # migrated after the send was scheduled are found there.
        while (later := conn.execute(select(func.max(runs.c.id)).where(runs.c.since == run)).scalar()):
            run = later
    return Via(given, run)


def _via_sender(engine: Engine, via: Via | None, sender: str) -> str:
    """The sender as the target knows it (unchanged without --via)."""
    if via is None or not sender:
        return sender
    with engine.connect() as conn:
        found = target_ids(conn, via.run, "user", [sender])
    if sender not in found:
        raise ViaError(f"--sender {sender!r}: {via.missing}")
    return found[sender]


def _via_keys(engine: Engine, via: Via | None, kind: str, specs: Iterable[Spec]) -> Iterator[Spec]:
    """Specs with their ids mapped through the run's id map, a batch at a
    time; an id not there is refused with the reason."""
    specs = iter(specs)
    if via is None:
        yield from specs
        return
    noun = "user_id" if kind == "user" else "group_id"
    while batch := list(islice(specs, 5000)):
        with engine.connect() as conn:
            found = target_ids(conn, via.run, kind, [s.key for s in batch if not s.problems])
        for s in batch:
            if not s.problems and s.key not in found:
                s.problems = [f"{noun}: {via.missing}"]
            elif not s.problems:
                s.key = found[s.key]
            yield s


def _start_plan(engine: Engine, kind: str, operation: Operation, target: Target,
                params: dict[str, Any], specs: Iterable[Spec], source_app: str | None = None,
                progress=None, user_ids: bool = True) -> PlanReport:
    target.require(operation, params)
    # A chunk carries at least one full vendor batch, or batching is wasted.
    params["chunk_size"] = max(params["chunk_size"], target.batch_size(operation))
    job_id = create_job(engine, kind=kind, operation=operation.value, app=target.app,
                        source_app=source_app, params=params)
    # Ids are told apart as the target tells them (NetEase: `Bob` is `bob`).
    return plan(engine, job_id, specs, progress,
                id_key=target.rules.id_key if target.rules.id_form and user_ids else None)


def plan_user_migration(engine: Engine, target: Target, input_path: str | Path, *,
                        source_app: str | None, chunk_size: int, progress=None) -> Planned:
    ignored: set[str] = set()
    report = _start_plan(engine, "migrate_users", Operation.REGISTER, target,
                         {"input": str(input_path), "chunk_size": chunk_size},
                         user_specs(read_rows(input_path), target, ignored), source_app, progress)
    return Planned(report, sorted(ignored))


def plan_token_refresh(engine: Engine, target: Target, input_path: str | Path, *,
                       chunk_size: int, progress=None) -> Planned:
    report = _start_plan(engine, "refresh_tokens", Operation.ISSUE_TOKEN, target,
                         {"input": str(input_path), "chunk_size": chunk_size},
                         id_specs(read_rows(input_path)), progress=progress)
    return Planned(report)


def _via_params(via: Via | None, sender: str) -> dict[str, Any]:
    return {} if via is None else {"via": via.given, "via_run": via.run, "source_sender": sender}


def plan_send(engine: Engine, target: Target, input_path: str | Path, *, sender: str,
              message: Message, chunk_size: int, progress=None,
              extra: dict[str, Any] | None = None, keep: Callable[[Row], bool] | None = None,
              via: int | None = None) -> Planned:
    """`keep`: only the rows it keeps are this job's (a local-time fire's zone).
    `via`: a run whose id map turns the sender's and recipients' ids into the target's."""
    mapped = via_run(engine, via, target.app)
    rows = read_rows(input_path)
    report = _start_plan(engine, "send", Operation.SEND, target,
                         {"input": str(input_path), "sender": _via_sender(engine, mapped, sender),
                          "message": encode_message(message), "chunk_size": chunk_size,
                          **_via_params(mapped, sender), **(extra or {})},
                         _via_keys(engine, mapped, "user",
                                   id_specs(r for r in rows if keep is None or keep(r))),
                         progress=progress)
    return Planned(report)


GROUP_ID_COLUMNS = ("group_id", "groupid", "tid", "id", "group")


def plan_group_send(engine: Engine, target: Target, input_path: str | Path, *, sender: str,
                    message: Message, chunk_size: int, progress=None,
                    extra: dict[str, Any] | None = None, via: int | None = None) -> Planned:
    """A message from `sender` in each group of the input, in the vendor's
    batches (RongCloud: 3 groups a call). Group ids are compared as written."""
    mapped = via_run(engine, via, target.app)
    rows = read_rows(input_path, key_columns=GROUP_ID_COLUMNS)
    report = _start_plan(engine, "send_group", Operation.SEND_GROUP, target,
                         {"input": str(input_path), "sender": _via_sender(engine, mapped, sender),
                          "message": encode_message(message), "chunk_size": chunk_size,
                          **_via_params(mapped, sender), **(extra or {})},
                         _via_keys(engine, mapped, "group", _group_specs(rows)), progress=progress,
                         user_ids=False)
    return Planned(report)


def _group_specs(rows: Iterator[Row]) -> Iterator[Spec]:
    for spec in id_specs(rows):
        yield Spec(spec.row, spec.key, spec.payload,
                   [p.replace("user_id", "group_id") for p in spec.problems])


BROADCAST_KEY = "all"  # the one item of a broadcast: every user of the app


def plan_broadcast(engine: Engine, target: Target, *, sender: str, message: Message,
                   chunk_size: int, extra: dict[str, Any] | None = None,
                   via: int | None = None) -> Planned:
    """The vendor's app-wide broadcast: one item, one vendor call, one result.
    A vendor without one is refused here, before a job exists."""
    mapped = via_run(engine, via, target.app)
    report = _start_plan(engine, "broadcast", Operation.BROADCAST, target,
                         {"sender": _via_sender(engine, mapped, sender),
                          "message": encode_message(message), "chunk_size": chunk_size,
                          **_via_params(mapped, sender), **(extra or {})},
                         iter([Spec(1, BROADCAST_KEY)]), user_ids=False)
    return Planned(report)
