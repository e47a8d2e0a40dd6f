"""A run whose accounts are listed from the source (OpenIM, no export
file), its command SIGKILLed in the middle of the listing, then carried on
with `imshift resume R1`: the listing goes on from the page after the last
one stored, so the source is read once and the target gets every source
user exactly once.

Both sandboxes are served on loopback by this test's process, so their
state outlives the kill; the kill lands while the listing's third page call
is held at the source's door (tests/jobs/test_run_crash.py's Door), after
two pages were stored.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from imshift.jobs.progress import results
from imshift.models.tables import Run
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox
from imshift.vendors.sandbox.serve import served

from helpers import command_env, context, imshift, kill
from test_run_crash import Door

pytestmark = pytest.mark.loopback

USERS = 650  # OpenIM lists 200 ids a page: 4 pages with the admin left out of the first
LIST_PATH = "/user/get_all_users_uid"
FAST = {op: 500.0 for op in ("register", "update_profile", "list_users", "get_profiles")}


class CountingDoor(Door):
    """The Door, counting the calls on each path it lets through."""

    def __init__(self, app):
        super().__init__(app)
        self.seen: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen[scope["path"]] = self.seen.get(scope["path"], 0) + 1
        return await super().__call__(scope, receive, send)


def name_of(i: int) -> str:
    return f"Lïsted {i}"


def wait_for(check, what: str, alive, log: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline and alive(), (what, log.read_text()[-3000:])
        time.sleep(0.01)
    return found


def test_a_run_killed_mid_listing_resumes_from_the_last_stored_page(tmp_path):
    source = OpenIMSandbox()
    for i in range(USERS):
        source._add_user({"userID": f"src_{i:04d}", "nickname": name_of(i)})
    source.app = door = CountingDoor(source.app)
    target = RongCloudSandbox()
    db = f"sqlite:///{tmp_path / 'imshift.db'}"
    log = tmp_path / "commands.log"
    with served(source) as source_url, served(target) as target_url:
        env = command_env(tmp_path, db, {"old": ("openim", source.config(source_url), FAST),
                                         "new": ("rongcloud", target.config(target_url), FAST)})
        ctx = context(db)
        door.hold({LIST_PATH}, after=2)  # pages 1 and 2 go through, page 3 is held
        command = imshift(["migrate", "run", "--from", "old", "--to", "new"], env, log)
        try:
            wait_for(lambda: door.held is not None, "the third page call", lambda: command.poll() is None,
                     log)
            with ctx.engine.connect() as conn:
                run = conn.execute(select(Run.__table__).where(Run.__table__.c.id == 1)).first()
            assert (run.status, run.list_state) == ("planning", "listing")
            assert run.list_cursor == "400"  # two pages of 200 ids read, the admin left out
            # While its planner is alive, the run is neither carried on nor started twice.
            busy = subprocess.run([sys.executable, "-m", "imshift.cli", "resume", "R1"], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert busy.returncode != 0 and "run R1 is being planned by" in busy.stdout + busy.stderr, \
                busy.stdout + busy.stderr
            kill(command, then=door.release)  # the page call it had sent reaches the vendor
        finally:
            door.release()
            kill(command)
        with ctx.engine.connect() as conn:
            stages = conn.exec_driver_sql("SELECT id, status FROM jobs WHERE run_id = 1").all()
        assert [s for _, s in stages] == ["planning"]  # cut off inside the accounts stage
        before = len(list(results(ctx.engine, stages[0][0])))
        assert before == 399

        # `start` names the run, not its half-planned stage's job.
        started = subprocess.run([sys.executable, "-m", "imshift.cli", "start", "R1"], env=env,
                                 capture_output=True, text=True, timeout=60)
        said = " ".join((started.stdout + started.stderr).split())
        assert started.returncode != 0 and "`imshift resume R1` carries the planning on" in said, said
        assert f"cancel {stages[0][0]}" not in said and "`imshift cancel R1` removes the run" in said

        resumed = subprocess.run([sys.executable, "-m", "imshift.cli", "resume", "R1"], env=env,
                                 capture_output=True, text=True, timeout=120)
        out = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, out
        assert "planning carried on" in out

    # The listing was read once: pages 1-3 by the killed command, 3-4 by resume.
    assert door.seen[LIST_PATH] == 3 + 2, door.seen
    items = list(results(ctx.engine, stages[0][0]))
    assert len(items) == USERS and {i.state for i in items} == {"ok"}
    assert sorted(i.key for i in items) == [f"src_{i:04d}" for i in range(USERS)]
    assert sorted(i.row for i in items) == list(range(1, USERS + 1))  # rows go on where they stopped
    # The target holds every source user once, with the profile listed.
    assert sorted(target.users) == [f"src_{i:04d}" for i in range(USERS)]
    assert target.duplicates.get("register", 0) == 0
    assert target.calls["register"] == USERS  # one getToken each, none twice
    for i in (0, 398, 399, 649):
        assert target.stored_profile(f"src_{i:04d}").name == name_of(i)
    ctx.engine.dispose()
