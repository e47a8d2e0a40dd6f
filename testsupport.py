"""What tests and benchmarks need around imshift, kept out of the shipped package:
a private redis-server, a throwaway PostgreSQL database, a free port, and the
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
