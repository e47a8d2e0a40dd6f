"""`imshift demo`: a user migration and a mass send on embedded defaults.

Makes a sample export of users (Unicode names, a few bad rows), migrates it
from RongCloud to NetEase Yunxin (the built-in sandboxes, which enforce the
vendors' default rate limits), shows progress, verifies the accounts at the
target, then messages a thousand of them through the batch endpoint. Runs
on a temporary SQLite database with the in-process broker: nothing to set up.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from rich.console import Console

from imshift.context import Context
from imshift.jobs import control, kinds
from imshift.jobs.progress import results
from imshift.settings import AppSettings, Settings
from imshift.vendors.vocabulary import Message, Operation

from imshift.workers.embedded import in_process_workers

from .watch import summary, watch

NAMES = ["李雷", "Zoë", "Ólafur", "Мария", "محمد", "さくら", "🚀 Rocket", "Jean-Luc", "김민준", "Αθηνά"]
BAD_ROWS = {  # row index -> what makes it bad for NetEase (the last row repeats an id)
    17: {"user_id": "has spaces!"},
    40: {"user_id": "x" * 40},
    77: {"name": "n" * 70},
}
SOURCE, TARGET = "rongcloud-app", "netease-app"


def write_sample(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["user_id", "name", "avatar", "gender"])
        writer.writeheader()
        for i in range(count):
            row = {"user_id": f"user_{i:06d}", "name": f"{NAMES[i % len(NAMES)]} {i}",
                   "avatar": f"https://cdn.example.com/avatars/{i}.png", "gender": str(i % 3)}
            row.update(BAD_ROWS.get(i, {}))
            if i == count - 1:
                row["user_id"] = "user_000003"
            writer.writerow(row)


def run_demo(count: int, console: Console) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imshift-demo-"))
    settings = Settings(database_url=f"sqlite:///{workdir}/imshift.db", redis_url=None,
                        apps={SOURCE: AppSettings(vendor="rongcloud", sandbox=True),
                              TARGET: AppSettings(vendor="netease", sandbox=True)})
    ctx = Context(settings)
    users = workdir / "users.csv"
    write_sample(users, count)
    limit = ctx.rates(TARGET)[Operation.REGISTER.value]
    console.print(f"[bold]imshift demo[/bold]: migrating {count:,} users from the RongCloud sandbox "
                  f"to the NetEase sandbox (which allows {limit:g} registrations/s)\n"
                  f"  input {users}, database {workdir / 'imshift.db'}\n")

    ctx.runtime  # noqa: B018  (configures the in-process workers)
    with in_process_workers(ctx.broker):
        migrate_then_send(ctx, users, console)


def migrate_then_send(ctx: Context, users: Path, console: Console) -> None:
    settings, workdir = ctx.settings, users.parent
    limit = ctx.rates(TARGET)[Operation.REGISTER.value]
    planned = kinds.plan_user_migration(ctx.engine, ctx.target(TARGET), users, source_app=SOURCE,
                                           chunk_size=settings.chunk_size)
    report = planned.report
    console.print(f"planned job {report.job_id}: {report.pending:,} to migrate, "
                  f"{report.invalid} invalid, {report.duplicates} duplicate rows")
    control.start(ctx.engine, ctx.broker, report.job_id)
    p = watch(ctx, report.job_id, console, sweeping=True)
    summary(ctx, p, console)

    box = ctx.sandbox(TARGET)
    migrated = [i for i in results(ctx.engine, report.job_id) if i.state in ("ok", "exists")]
    present = sum(1 for i in migrated if box.stored_profile(i.key) is not None)
    console.print(f"\nat the target: {present:,} of {len(migrated):,} migrated accounts present; "
                  f"{box.calls['register']:,} register calls, {box.over_limit['register']} over the "
                  f"limit, at most {box.max_per_second('register')} in any one second (limit {limit:g})")

    recipients = workdir / "recipients.txt"
    chosen = [i.key for i in migrated[1:1001]]
    recipients.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    sender = migrated[0].key
    console.print(f"\nsending a welcome message from {sender} to {len(chosen):,} of them")
    planned = kinds.plan_send(ctx.engine, ctx.target(TARGET), recipients, sender=sender,
                                 message=Message(text="欢迎 / welcome to the new chat service 👋"),
                                 chunk_size=settings.chunk_size)
    control.start(ctx.engine, ctx.broker, planned.report.job_id)
    p = watch(ctx, planned.report.job_id, console, sweeping=True)
    summary(ctx, p, console)
    delivered = sum(len(box.inbox(key)) for key in chosen)
    console.print(f"\n{delivered:,} messages delivered in {box.calls['send']} batch call(s) "
                  f"(up to {ctx.target(TARGET).batch_size(Operation.SEND)} "
                  f"recipients each)")
