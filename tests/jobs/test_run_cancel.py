"""Cancelling a run while a group's create call is under way: the item
whose call was let go ends `unknown` in the operation table's words for a
create ("the group may have been created"), not a send's."""

import time

from imshift.jobs import run_control, runs
from imshift.jobs.progress import results
from imshift.vendors.operations import step
from imshift.vendors.vocabulary import Operation
from imshift.workers.embedded import in_process_workers

from helpers import context, start_until_held, write_users
from test_run_crash import Door
from test_runs import FAST, user, write_groups


def test_cancelling_a_run_in_its_groups_stage_says_the_group_may_have_been_created(tmp_path):
    ctx = context(f"sqlite:///{tmp_path / 'imshift.db'}",
                  apps={"old": {"vendor": "openim", "sandbox": True},
                        "new": {"vendor": "maxim", "sandbox": True, "rates": FAST}})
    users = write_users(tmp_path / "u.csv", 20)
    groups = write_groups(tmp_path / "g.jsonl", [
        {"group_id": f"grp_{n}", "name": f"G {n}", "owner": user(n), "members": [user(n + 1)]}
        for n in range(10)])
    plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                         runs.RunRequest(users=users, groups=groups), chunk_size=50)
    groups_job = next(s.job_id for s in plan.stages if s.stage == "groups")
    box = ctx.sandbox("new")
    box.app = door = Door(box.app)
    door.hold({"/group/create"}, after=2)  # Maxim gives the group its id: a create is not repeated
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        start_until_held(ctx, plan.run_id, door)
        run_control.cancel(ctx.engine, plan.run_id)
        unsure = list(results(ctx.engine, groups_job, "unknown"))
        door.release()
        deadline = time.monotonic() + 60
        while any(s.counts.get("claimed") for _, s in run_control.run_progress(ctx.engine, plan.run_id).stages):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert unsure, list(results(ctx.engine, groups_job))  # the held create at least
    words = step(Operation.CREATE_GROUP).unsure
    assert words == "the group may have been created"
    for item in unsure:
        assert item.message == f"cancelled while its call was under way; {words}, so it is not sent again"
    assert run_control.run_progress(ctx.engine, plan.run_id).status == "cancelled"
    ctx.engine.dispose()
