"""The SQLite file itself: made by several first commands at once, and
readable by its owner only."""

import sqlite3
import stat
import subprocess
import sys
import threading
import time

from sqlalchemy import text

from imshift.models import make_engine
from imshift.models.db import _sqlite_pragmas

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


def test_connections_opened_at_once_on_a_fresh_file_all_switch_it_to_wal(tmp_path):
    """The switch to WAL answers "database is locked" at once, whatever the
    busy timeout, when connections make it together (1-2% of them, in 300
    rounds of three, before it was tried again): every one gets in."""
    failures: list[str] = []
    for trial in range(300):
        path = tmp_path / f"t{trial}.db"
        together = threading.Barrier(3)

        def first_connection(path=path, together=together) -> None:
            connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
            together.wait()
            try:
                _sqlite_pragmas(connection, None)  # what make_engine's pool runs on each connection
            except sqlite3.OperationalError as exc:  # counted, so one round does not hide the rest
                failures.append(str(exc))
            finally:
                connection.close()

        threads = [threading.Thread(target=first_connection) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert failures == [], f"{len(failures)} of 900 connections failed: {failures[:3]}"


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
