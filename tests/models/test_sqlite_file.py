"""The SQLite file itself: made by several first commands at once, and
readable by its owner only."""

import stat
import subprocess
import sys
import time

from sqlalchemy import text

from imshift.models import make_engine

# Each process waits for the go file, so they all open the fresh database at once.
FIRST_COMMAND = """
import os, sys, time
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
from imshift.models import make_engine
make_engine(sys.argv[1]).dispose()
"""


def test_first_commands_at_once_on_a_fresh_file_all_succeed(tmp_path):
    for trial in range(3):
        url = f"sqlite:///{tmp_path}/t{trial}/imshift.db"
        go = tmp_path / f"go{trial}"
        processes = [subprocess.Popen([sys.executable, "-c", FIRST_COMMAND, url, str(go)],
                                      stderr=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(1.0)  # the interpreters are up and waiting
        go.touch()
        errors = [p.communicate(timeout=60)[1] for p in processes]
        assert [p.returncode for p in processes] == [0] * 4, errors
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from alembic_version")).scalar_one() == 1
        engine.dispose()


def test_the_database_and_its_wal_files_are_private(tmp_path):
    url = f"sqlite:///{tmp_path}/data/imshift.db"
    engine = make_engine(url)
    with engine.begin() as conn:  # a write, so the -wal and -shm files exist
        conn.execute(text("insert into jobs (kind, operation, app, status, params, total, created_at) "
                          "values ('send', 'send', 'a', 'planned', '{}', 0, 0)"))
        names = ["imshift.db", "imshift.db-wal", "imshift.db-shm"]
        modes = {n: stat.S_IMODE((tmp_path / "data" / n).stat().st_mode) for n in names}
    engine.dispose()
    assert modes == {n: 0o600 for n in names}
