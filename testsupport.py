"""What tests and benchmarks need around imshift, kept out of the shipped package:
a private redis-server, a throwaway PostgreSQL database, a PostgreSQL cluster of
a test's own (to stop and start), a free port, and the
environment that hands a vendor app to worker processes.

A private redis-server has its own free port on 127.0.0.1 and its own temp
dir, so a test never touches a shared Redis:

    with RedisServer() as server:          # or server = RedisServer().start()
        client = redis.asyncio.Redis.from_url(server.url)
        server.kill()                      # SIGKILL, as a crash
        server.start()                     # back on the SAME port and dir
        server.restart(appendonly=True)    # clean stop, then start with an AOF

Start with appendonly=True when data must survive a restart (with
appendfsync always, so even a SIGKILL loses no acknowledged write).

A throwaway PostgreSQL database is created on the server `admin_url` names
and dropped afterwards (never the server's own data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, *, port: int | None = None, appendonly: bool = False,
                 extra_args: Sequence[str] = (), executable: str = "redis-server"):
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.executable = shutil.which(executable) or executable
        self.dir = Path(tempfile.mkdtemp(prefix="imshift-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, appendonly: bool | None = None, timeout: float = 10.0) -> "RedisServer":
        """Start (again) on this port and dir; returns once it answers PING."""
        if self.running():
            raise RuntimeError(f"redis-server already runs on port {self.port}")
        if appendonly is not None:
            self.appendonly = appendonly
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--logfile", str(self.log), "--daemonize", "no",
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", *self.extra_args]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop(kill=True)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown, the AOF flushed) or SIGKILL (a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        self.stop(kill=True)

    def restart(self, *, kill: bool = False, appendonly: bool | None = None) -> "RedisServer":
        self.stop(kill=kill)
        return self.start(appendonly=appendonly)

    def close(self) -> None:
        """Stop for good and remove the temp dir."""
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start() if not self.running() else self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- PostgreSQL ------------------------------------------------------------------------------

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("IMSHIFT_TEST_POSTGRES", DEFAULT_ADMIN_URL)


@contextlib.contextmanager
def throwaway_database(admin: str | None = None, prefix: str = "imshift_tmp") -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin or admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=url.host, port=url.port or 5432, user=url.username,
                    password=url.password, dbname=url.database, autocommit=True)
    try:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL at {url.host}:{url.port or 5432} is needed "
                           f"(scripts/test starts it): {exc}") from None
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- vendor apps for worker processes --------------------------------------------------------

def app_environment(name: str, vendor: str, config: Any) -> dict[str, str]:
    """Environment variables that configure app `name` like `config` (a vendor
    config dataclass): how tests and benchmarks hand an app to worker processes."""
    env = {f"IMSHIFT_APPS__{name.upper()}__VENDOR": vendor}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or callable(value):
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(list(value) if isinstance(value, tuple) else value)
        env[f"IMSHIFT_APPS__{name.upper()}__{field.name.upper()}"] = str(value)
    return env


# -- a PostgreSQL cluster of a test's own ----------------------------------------------------

def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl (None: not installed)."""
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())

    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin")
             if (p / "initdb").exists() and (p / "pg_ctl").exists()]
    return max(found, key=version) if found else None


class PostgresCluster:
    """A PostgreSQL server of a test's own, to stop and start at will: initdb
    in a temp dir, trust auth, listening on a free port on 127.0.0.1 (and its
    socket in that dir, never the machine's). Run as root, the server runs as
    the `postgres` user (initdb refuses root).

        with PostgresCluster() as pg:      # or pg = PostgresCluster().start()
            url = pg.url                   # postgresql://postgres@127.0.0.1:PORT/postgres
            pg.stop(mode="immediate")      # as a crash: no shutdown checkpoint
            pg.start()                     # back on the SAME port and data
    """

    def __init__(self, *, port: int | None = None, bindir: Path | None = None):
        self.bindir = bindir or postgres_bin()
        if self.bindir is None:
            raise RuntimeError("initdb and pg_ctl are not installed (no /usr/lib/postgresql/*/bin)")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="imshift-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if self._as:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--no-sync"], timeout=120)

    def _run(self, args: list[str], timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}\n{tail}")

    def url_for(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for()

    def running(self) -> bool:
        done = subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0

    def start(self, timeout: float = 60) -> "PostgresCluster":
        """Start (again) on this port and data; returns once it takes connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=200"
        self._run([str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                   "-w", "-t", str(int(timeout)), "-o", options], timeout=timeout + 10)
        return self

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """pg_ctl stop: `fast` (clients cut off, a clean shutdown) or
        `immediate` (as a crash: recovery at the next start)."""
        if self.data.exists() and self.running():
            self._run([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode,
                       "-w", "-t", str(int(timeout))], timeout=timeout + 10)

    def restart(self, mode: str = "fast") -> "PostgresCluster":
        self.stop(mode)
        return self.start()

    def create_database(self, name: str) -> str:
        """A database on this cluster; its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def close(self) -> None:
        """Stop for good and remove the temp dir."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start() if not self.running() else self

    def __exit__(self, *exc: object) -> None:
        self.close()
