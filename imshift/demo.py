"""`imshift demo`: a whole migration run and a mass send on embedded defaults.

Makes a sample export (users with Unicode names and a few bad rows, friend
pairs, groups) and runs it from the RongCloud sandbox into the Maxim
sandbox, which assigns its own numeric ids: accounts, friends, groups,
members, new tokens, then a read-back of all of it through Maxim's own
read endpoints. Shows each stage's progress, the run's report and some of
its id map, then messages a thousand of the migrated users through Maxim's
batch endpoint, addressed by the ids Maxim gave them. Last, a broadcast
schedule a few seconds ahead and a recurring send, each fired once by the
scheduler in this process (imshift/demo_schedules.py). Then a bridge both
ways over the run, with a few users on each vendor messaging the other
(imshift/demo_bridge.py). Runs on a temporary
SQLite database with the in-process broker and workers: nothing to set up,
and nothing left behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from imshift.context import Context, SetupError
from imshift.jobs import control, kinds, run_control, runs
from imshift.jobs.progress import results
from imshift.models.tables import JobStatus
from imshift.settings import AppSettings, Settings
from imshift.vendors.vocabulary import Message, Operation

from imshift.workers.embedded import in_process_workers

from . import logs
from .demo_bridge import run_bridge
from .demo_schedules import run_schedules
from .clibase import fail, find_run, run_report
from .watch import summary, watch

NAMES = ["李雷", "Zoë", "Ólafur", "Мария", "محمد", "さくら", "🚀 Rocket", "Jean-Luc", "김민준", "Αθηνά"]
BAD_ROWS = {  # row index -> what Maxim refuses in it (and the last row repeats an id)
    17: {"user_id": "has spaces!"},  # letters, digits and _ only
    40: {"user_id": "mta_agent"},  # the mta and maxim prefixes are Maxim's own
    77: {"user_id": "20240077"},  # not all digits: Maxim's own ids are numbers
}
SOURCE, TARGET = "rongcloud-app", "maxim-app"
# Maxim documents no rate limits and imshift's defaults for it are cautious
# (5 registrations/s); the demo's sandbox allows this much of every operation.
DEMO_RATE = 2000.0
OPERATIONS = ("register", "update_profile", "get_profiles", "issue_token", "create_group",
              "add_members", "import_friends", "get_members", "get_friends", "send")


def user_ids(count: int) -> list[str]:
    """The ids as the export writes them, bad ones included (the last row
    repeats user_000003, so it is not listed twice here)."""
    ids = [f"user_{i:06d}" for i in range(count - 1)]
    for i, fields in BAD_ROWS.items():
        if i < len(ids):
            ids[i] = fields["user_id"]
    return ids


def write_sample(workdir: Path, count: int) -> tuple[Path, Path, Path]:
    """users.csv, friends.csv and groups.jsonl as a source app's export."""
    users = workdir / "users.csv"
    with users.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["user_id", "name", "avatar"])
        writer.writeheader()
        for i in range(count):
            row = {"user_id": f"user_{i:06d}", "name": f"{NAMES[i % len(NAMES)]} {i}",
                   "avatar": f"https://cdn.example.com/avatars/{i}.png"}
            row.update(BAD_ROWS.get(i, {}))
            if i == count - 1:
                row["user_id"] = "user_000003"
            writer.writerow(row)
    ids = user_ids(count)
    n = len(ids)
    friends = workdir / "friends.csv"
    with friends.open("w", newline="", encoding="utf-8") as f:  # each user's pairs together
        f.write("user_id,friend_id\n")
        f.writelines(f"{ids[i]},{ids[(i + d) % n]}\n" for i in range(n) for d in (1, 3)
                     if i + d < n)
    groups = workdir / "groups.jsonl"
    count_groups, largest = max(3, n // 100), min(150, n)  # over 100 members: a members stage too
    with groups.open("w", encoding="utf-8") as f:
        for g in range(count_groups):
            size = round(3 * (largest / 3) ** (g / (count_groups - 1)))
            people = [ids[(g * 37 + k * 7) % n] for k in range(size)]
            f.write(json.dumps({"group_id": f"team_{g:03d}", "name": f"{NAMES[g % len(NAMES)]} team",
                                "owner": people[0], "members": people[1:]}, ensure_ascii=False) + "\n")
    return users, friends, groups


def run_demo(count: int, console: Console) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imshift-demo-"))
    fast = {op: DEMO_RATE for op in OPERATIONS}
    key = {}
    if not os.environ.get("IMSHIFT_TOKEN_KEY"):
        from cryptography.fernet import Fernet
        key = {"token_key": Fernet.generate_key().decode()}
    settings = Settings(database_url=f"sqlite:///{workdir}/imshift.db", redis_url=None, **key,
                        apps={SOURCE: AppSettings(vendor="rongcloud", sandbox=True),
                              TARGET: AppSettings(vendor="maxim", sandbox=True, rates=fast)})
    ctx = Context(settings)
    try:
        ctx.check()  # an IMSHIFT_TOKEN_KEY that is set but malformed
    except SetupError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        fail(str(exc))
    logs.install(ctx.secrets())
    users, friends, groups = write_sample(workdir, count)
    console.print(f"[bold]imshift demo[/bold]: a migration run of {count:,} users with their friends "
                  f"and groups, from the RongCloud sandbox to the Maxim sandbox (which assigns its own "
                  f"numeric ids), with new tokens and a read-back; then a welcome message to up to "
                  f"1,000 of them, a scheduled broadcast, a recurring send, and messages crossing a "
                  f"bridge between the two vendors both ways\n  inputs {users.name}, {friends.name}, {groups.name} in {workdir}; "
                  f"database {workdir / 'imshift.db'}")
    if key:
        console.print("  IMSHIFT_TOKEN_KEY is not set: the new tokens are stored encrypted with a key "
                      "made for this demo")
    console.print()
    try:
        ctx.runtime  # noqa: B018  (configures the in-process workers)
        with in_process_workers(ctx.broker):
            run_id = migrate(ctx, users, friends, groups, console)
            sender, chosen = send(ctx, run_id, workdir, console)
            run_schedules(ctx, TARGET, sender, chosen[:3], workdir, console)
            run_bridge(ctx, SOURCE, TARGET, run_id, friends, groups, console)
    finally:  # its database and sample files are of no use after it, however it ended
        ctx.engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(f"\nDone; {workdir} is removed. Next: put your apps in imshift.toml (README, "
                  "Using it) and check a migration without sending anything: `imshift migrate run "
                  "--from OLD --to NEW --users users.csv --dry-run`", highlight=False)


def migrate(ctx: Context, users: Path, friends: Path, groups: Path, console: Console) -> int:
    from .runcli import print_plan

    started = time.monotonic()
    plan = runs.plan_run(ctx.engine, SOURCE, ctx.target(TARGET),
                         runs.RunRequest(users=users, friends=friends, groups=groups, tokens=True,
                                         verify=True), chunk_size=ctx.settings.chunk_size)
    accounts = plan.stages[0].report
    console.print(f"planned run {run_control.name(plan.run_id)}: accounts {accounts.pending:,} to "
                  f"migrate, {accounts.invalid} invalid, {accounts.duplicates} duplicate rows")
    print_plan(plan, TARGET)
    run_control.start(ctx.engine, ctx.broker, plan.run_id)
    while True:  # each stage starts by itself when the one before it finishes
        p = find_run(ctx, plan.run_id)
        if p.status != JobStatus.RUNNING.value or p.current is None:
            break
        stage, stage_progress = p.current
        if stage_progress.status == JobStatus.RUNNING.value:
            console.print(f"[bold]{stage}[/bold] (job {stage_progress.job_id})")
            watch(ctx, stage_progress.job_id, console, sweeping=True)
        else:
            time.sleep(0.1)  # the hand-over to the next stage is under way
    console.print()
    run_report(p)
    # The rows Maxim refused never reached it; what named them was skipped.
    done = p.stages[0][1]
    skipped = {stage: sp.counts["skipped"] for stage, sp in p.stages if sp.counts.get("skipped")}
    console.print(f"  accounts: {done.status}, {done.completed:,}/{done.total:,} items "
                  f"done, {done.counts.get('rejected', 0)} rows refused at planning (above)"
                  + (", so " + ", ".join(f"{n:,} {stage} items naming them were skipped"
                                         for stage, n in skipped.items()) if skipped else "")
                  + f"; the run took {time.monotonic() - started:.1f} s", highlight=False)

    box = ctx.sandbox(TARGET)
    mapped = list(run_control.id_map_rows(ctx.engine, plan.run_id))
    user_map = [(s, t) for kind, s, t in mapped if kind == "user"]
    group_map = [(s, t) for kind, s, t in mapped if kind == "group"]
    console.print(f"\nthe id map: {len(user_map):,} users and {len(group_map):,} groups, as Maxim "
                  f"numbered them (`imshift idmap {run_control.name(plan.run_id)}` prints it all)")
    for source, target in user_map[:3] + group_map[:2]:
        console.print(f"  {source:>12} -> {target}", highlight=False)
    present = sum(1 for _, target in user_map if box.stored_profile(target) is not None)
    rates = ctx.rates(TARGET)
    console.print(f"\nat the target: {present:,} of {len(user_map):,} migrated accounts present; "
                  f"{sum(box.calls.values()):,} calls in all ({box.calls['register']:,} to register "
                  f"{len(user_map):,} accounts, {box.calls['issue_token']:,} for their tokens), "
                  f"{sum(box.over_limit.values())} over the limit ({rates['register']:g} calls/s "
                  "allowed per operation)")
    return plan.run_id


def send(ctx: Context, run_id: int, workdir: Path, console: Console) -> tuple[str, list[str]]:
    """A welcome message from the first migrated user to the next thousand,
    addressed by their Maxim ids (Maxim's send takes nothing else): the
    sender's and the recipients' Maxim ids."""
    box = ctx.sandbox(TARGET)
    accounts_job = find_run(ctx, run_id).stages[0][1].job_id
    migrated = [i.key for i in results(ctx.engine, accounts_job) if i.state in ("ok", "exists")]
    ids = dict((s, t) for kind, s, t in run_control.id_map_rows(ctx.engine, run_id) if kind == "user")
    sender, chosen = ids[migrated[0]], [ids[u] for u in migrated[1:1001]]
    recipients = workdir / "recipients.txt"
    recipients.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    console.print(f"\nsending a welcome message from {migrated[0]} (Maxim id {sender}) to "
                  f"{len(chosen):,} of them, by their Maxim ids")
    planned = kinds.plan_send(ctx.engine, ctx.target(TARGET), recipients, sender=sender,
                              message=Message(text="欢迎 / welcome to the new chat service 👋"),
                              chunk_size=ctx.settings.chunk_size)
    control.start(ctx.engine, ctx.broker, planned.report.job_id)
    done = watch(ctx, planned.report.job_id, console, sweeping=True)
    summary(ctx, done, console)
    delivered = sum(len(box.inbox(target)) for target in chosen)
    console.print(f"\n{delivered:,} messages delivered in {box.calls['send']} batch call(s) "
                  f"(up to {ctx.target(TARGET).batch_size(Operation.SEND)} recipients each)")
    return sender, chosen
