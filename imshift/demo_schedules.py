"""The demo's schedules: a broadcast a few seconds ahead and a send that
recurs every two seconds, fired in this process by the scheduler's own
steps (jobs/schedules.py `fire_due`, then `wait_seconds` until the next is
due, as `imshift scheduler` does) and run by the demo's in-process workers.
The recurring schedule is removed after its first fire; the demo waits
through its next period to show it fired once, then prints both histories.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from imshift.context import Context
from imshift.jobs import control, schedules
from imshift.jobs.progress import progress
from imshift.vendors.operations import encode_message
from imshift.vendors.vocabulary import Message

from .schedulecli import history_table, print_fired

EVERY = "*/2 * * * * *"  # six cron fields, seconds first: every 2 s
# The broadcast falls due after the recurring send's first fire (at most
# 2 s away) and its next period, so the demo's scheduler is still looking
# when a second fire would come, had the removal not stopped it.
BROADCAST_IN = 4.0
POLL = 1.0  # the scheduler's longest sleep, as `imshift scheduler`'s default
GIVE_UP = 20.0  # seconds past the broadcast's time: the jobs have settled long before
SETTLED = ("finished", "failed", "cancelled")
ANNOUNCEMENT = "📣 scheduled announcement: the migration is done"
REMINDER = "⏰ a reminder every 2 s (until removed)"


def run_schedules(ctx: Context, app: str, sender: str, recipients: list[str], workdir: Path,
                  console: Console) -> tuple[int, int]:
    """Add, fire and show the two schedules: (broadcast id, recurring id)."""
    target = ctx.target(app)
    few = workdir / "recurring-recipients.txt"
    few.write_text("\n".join(recipients) + "\n", encoding="utf-8")
    broadcast = schedules.add(ctx.engine, target, command="broadcast", at=time.time() + BROADCAST_IN,
                              params={"sender": sender, "message": encode_message(
                                  Message(text=ANNOUNCEMENT))})
    recurring = schedules.add(ctx.engine, target, command="send", cron=EVERY,
                              params={"sender": sender, "to": str(few), "message": encode_message(
                                  Message(text=REMINDER))})
    console.print(f"\n[bold]schedule {broadcast}[/bold]: a broadcast on {app} at "
                  f"{schedules.local(schedules.get(ctx.engine, broadcast).at, 'UTC')}; "
                  f"[bold]schedule {recurring}[/bold]: a send to {len(recipients)} users on cron "
                  f"{EVERY!r} (UTC). The scheduler runs in this process, on the demo's embedded "
                  "defaults", highlight=False)
    firing = schedules.Firing(ctx.engine, ctx.target,
                              lambda job_id: control.start(ctx.engine, ctx.broker, job_id),
                              ctx.settings.chunk_size)
    jobs: dict[int, int] = {}
    deadline = time.time() + BROADCAST_IN + GIVE_UP
    while time.time() < deadline:
        for fired in schedules.fire_due(firing):
            print_fired(ctx, fired, console)
            if fired.job_id is not None:
                jobs[fired.schedule_id] = fired.job_id
            if fired.schedule_id == recurring:
                schedules.remove(ctx.engine, recurring)
                console.print(f"  removed schedule {recurring} after its first fire")
        if len(jobs) == 2 and all(getattr(progress(ctx.engine, j), "status", None) in SETTLED
                                  for j in jobs.values()):
            break
        time.sleep(schedules.wait_seconds(ctx.engine, POLL))
    box = ctx.sandbox(app)
    copies = {text: sum(m.get("text") == text for uid in box.users for m in box.inbox(str(uid)))
              for text in (ANNOUNCEMENT, REMINDER)}
    console.print(f"at the target: {box.calls['broadcast']} broadcast call(s), the announcement in "
                  f"{copies[ANNOUNCEMENT]:,} inboxes (everyone but its sender); the reminder in "
                  f"{copies[REMINDER]:,} inboxes ({len(recipients)} recipients, one fire)",
                  highlight=False)
    for schedule_id in (broadcast, recurring):
        console.print(history_table(ctx, schedules.get(ctx.engine, schedule_id)))
    return broadcast, recurring
