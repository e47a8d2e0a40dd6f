"""Without Redis, two commands on the same vendor app share its quota: their
embedded workers take their slots from one schedule, so the vendor never
sees more than its limit (before, each command took the whole quota)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served
from testsupport import app_environment

from helpers import made_database, write_users

RATE = 40


def test_two_embedded_commands_on_one_app_stay_within_its_limit(tmp_path):
    box = NeteaseSandbox(rate_limits={"register": RATE})
    with served(box) as url:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "IMSHIFT_REDIS_URL")}
        env.update({"IMSHIFT_CONFIG": str(tmp_path / "none.toml"),
                    "IMSHIFT_DATABASE_URL": made_database(f"sqlite:///{tmp_path}/imshift.db"),
                    "IMSHIFT_APPS__NEW__RATES": f'{{"register": {RATE}}}',
                    **app_environment("new", "netease", box.config(url))})
        commands = []
        for n in range(2):
            users = write_users(tmp_path / f"u{n}.csv", 200)
            text = users.read_text(encoding="utf-8").replace("\nuser_", f"\nc{n}_")
            users.write_text(text, encoding="utf-8")
            commands.append(subprocess.Popen(
                [sys.executable, "-m", "imshift.cli", "migrate", "users", "--from", "new", "--to", "new",
                 "--input", str(users)], env=env, cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + 120
        outputs = []
        for command in commands:
            out, _ = command.communicate(timeout=max(1, deadline - time.monotonic()))
            outputs.append(out)
            assert command.returncode == 0, out
    assert box.over_limit["register"] == 0, (box.stats(), outputs)
    assert box.max_per_second("register") <= RATE
    assert box.accepted["register"] == 400
