"""An embedded run whose PostgreSQL stops mid-run: one line naming the
command that continues it, and no traceback. The cluster is this test's
own (never the shared server), started on a free port in a temp folder."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from testsupport import free_port

PG_BIN = (sorted(glob.glob("/usr/lib/postgresql/*/bin")) or [""])[-1]


class OwnCluster:
    """initdb + pg_ctl in a temp folder, trust auth on 127.0.0.1 only. As
    root, the server runs as the `postgres` user (it refuses root)."""

    def __init__(self, folder):
        self.folder = folder
        self.data = os.path.join(folder, "data")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        os.makedirs(folder, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")

    def _run(self, *args):
        command = [os.path.join(PG_BIN, args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self):
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.folder, "log"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self):
        self._run("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")

    def stop_quietly(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running


def items_done(url: str) -> int:
    """How many items the vendor has taken (ok)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM items WHERE state = 'ok'").fetchone()[0]


@pytest.fixture
def cluster():
    if not PG_BIN:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    # Not under pytest's tmp_path: the `postgres` user cannot reach into root's 0700 folder.
    folder = tempfile.mkdtemp(prefix="imshift-pg-")
    try:
        own = OwnCluster(folder).init()
        own.start()
        yield own
        own.stop_quietly()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("planning, ref", [(["migrate", "run", "--users"], "R1"),
                                           (["migrate", "users", "--input"], "1")])
def test_work_whose_database_stops_ends_in_one_line_naming_resume(env, cluster, monkeypatch,
                                                                   planning, ref):
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", cluster.url)
    monkeypatch.setenv("IMSHIFT_APPS__NEW__RATES", '{"register": 20}')  # about 7 s of work
    (env / "users.csv").write_text("user_id,name\n" + "".join(f"u{i},User {i}\n" for i in range(150)),
                                   encoding="utf-8")
    plan = subprocess.run([sys.executable, "-m", "imshift.cli", *planning[:2], "--from", "new",
                           "--to", "new", planning[2], "users.csv", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    with open(env / "out.txt", "w") as out:
        command = subprocess.Popen([sys.executable, "-m", "imshift.cli", "start", ref],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
        try:
            deadline = time.monotonic() + 60
            while items_done(cluster.url) < 20:  # the accounts stage is under way (1 s of it)
                assert command.poll() is None and time.monotonic() < deadline, (env / "out.txt").read_text()
                time.sleep(0.1)
            cluster.stop()
            code = command.wait(timeout=120)
        finally:
            if command.poll() is None:
                command.kill()
    output = (env / "out.txt").read_text()
    assert "Traceback" not in output, output[:3000]
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert f"`imshift resume {ref}`" in last, output[-2000:]
    assert "run the command again" not in output, output[-2000:]
    assert len(output.strip().splitlines()) < 30, output[-3000:]

    cluster.start()  # back: the command the line named carries the run on to its end
    resumed = subprocess.run([sys.executable, "-m", "imshift.cli", "resume", ref],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "finished" in resumed.stdout, resumed.stdout[-2000:]
