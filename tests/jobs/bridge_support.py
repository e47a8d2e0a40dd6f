"""Two vendor sandboxes over real HTTP with a migration run between them,
an `imshift serve` process receiving their feeds, and simulated clients
sending on either side: what the bridge tests and `bench bridge` share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from imshift.jobs import bridges, run_control, runs
from imshift.vendors.registry import vendor
from imshift.vendors.vocabulary import Group, Profile
from imshift.workers.embedded import in_process_workers

from helpers import command_env, context, wait_until_done

FAST = {op: 1000.0 for op in ("register", "update_profile", "get_profiles", "issue_token",
                              "create_group", "add_members", "import_friends", "get_members",
                              "get_friends", "send", "send_group")}


PIDS: dict[str, int] = {}  # a served sandbox's base URL -> its process id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Side:
    app: str
    vendor: str
    box: Any
    url: str
    users: list[str] = field(default_factory=list)  # as this side knows them
    groups: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The sandbox's process (for the CPU it used: bench/bridge.py)."""
        return PIDS[self.url]

    def inbox(self, user: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_sandbox/inbox", params={"user": user}, timeout=10).json()

    def hook(self, server_url: str) -> str:
        """Where this side's feed is pointed: /hooks/APP, and for OpenIM,
        which signs nothing, the feed secret in the path."""
        secret = getattr(self.box.config(self.url), "feed_secret", "")
        return f"{server_url}/hooks/{self.app}" + (f"/{secret}" if secret else "")

    def feed_to(self, url: str, **faults: Any) -> None:
        reply = httpx.post(f"{self.url}/_sandbox/feed", json={"url": url, **faults}, timeout=10)
        assert reply.status_code == 200, reply.text


@dataclass
class Bridged:
    old: Side
    new: Side
    db: str
    env: dict[str, str]
    run_id: int
    ids: dict[str, dict[str, str]]  # kind -> old id -> new id
    server_url: str = ""


def user_name(i: int) -> str:
    return f"bu_{i:05d}"


def client_of(side: "Side") -> Any:
    """A vendor client of the side's app over real HTTP."""
    return vendor(side.vendor).make_client(side.box.config(side.url), httpx.AsyncClient(timeout=30))


async def _register(side: "Side", names: list[str]) -> list[str]:
    client = client_of(side)
    results = await client.register_users([Profile(n, f"Name {n}") for n in names])
    ids = [str(r.data.get("user_id") or n) for n, r in zip(names, results, strict=True)]
    assert all(r.succeeded for r in results), [r for r in results if not r.succeeded][:3]
    return ids


async def _groups(side: "Side", users: list[str], count: int, size: int) -> list[str]:
    client = client_of(side)
    made = []
    for g in range(count):
        members = [users[(g + 1 + i) % len(users)] for i in range(size - 1)]
        result = await client.create_group(Group(f"bg_{g}", f"Group {g}", users[g], members))
        assert result.succeeded, result
        made.append(str(result.data.get("group_id") or f"bg_{g}"))
    return made


@contextlib.contextmanager
def bridged(tmp_path: Path, database_url: str, old_vendor: str, new_vendor: str, *, users: int,
            groups: int = 0, group_size: int = 3, both_ways: bool = False,
            hold: float = 600.0, settle: float = 0.3,
            sandbox_rates: dict[str, dict[str, float]] | None = None,
            new_latency: float = 0.0) -> Iterator[Bridged]:
    """Users (and groups) on the old side, migrated to the new by a run, and
    a bridge between them; both sandboxes served on loopback (`sandbox_rates`:
    "old"/"new" -> the limits that sandbox enforces, its `--rate OP=N`;
    `new_latency`: seconds the new side's sandbox adds to every call)."""
    # Each sandbox a process of its own, as each vendor is a server of its own:
    # in this process they would share one interpreter lock with the clients.
    # `box` is a local twin that only says what the served one's credentials are.
    old_box, new_box = vendor(old_vendor).sandbox(), vendor(new_vendor).sandbox()
    limits = sandbox_rates or {}
    with sandbox_process(old_vendor, tmp_path / "old-sandbox.log", limits.get("old")) as old_url, \
            sandbox_process(new_vendor, tmp_path / "new-sandbox.log", limits.get("new"),
                            latency=new_latency) as new_url:
        old = Side("old", old_vendor, old_box, old_url)
        new = Side("new", new_vendor, new_box, new_url)
        names = [user_name(i) for i in range(users)]
        old.users = asyncio.run(_register(old, names))
        if groups:
            old.groups = asyncio.run(_groups(old, old.users, groups, group_size))
        users_csv = tmp_path / "users.csv"
        users_csv.write_text("user_id,name\n" + "".join(f"{u},Name {u}\n" for u in old.users),
                             encoding="utf-8")
        groups_file = None
        if groups:
            groups_file = tmp_path / "groups.jsonl"
            groups_file.write_text("".join(json.dumps({
                "group_id": gid, "name": f"Group {g}", "owner": old.users[g],
                "members": [old.users[(g + 1 + i) % len(old.users)] for i in range(group_size - 1)]}) + "\n"
                for g, gid in enumerate(old.groups)), encoding="utf-8")
        apps = {"old": (old_vendor, old_box.config(old_url), FAST),
                "new": (new_vendor, new_box.config(new_url), FAST)}
        env = command_env(tmp_path, database_url, apps)
        ctx = context(database_url, apps={name: {"vendor": v, "rates": r, **_fields(c)}
                                          for name, (v, c, r) in apps.items()})
        plan = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                             runs.RunRequest(users=users_csv, groups=groups_file), chunk_size=200)
        ctx.runtime  # noqa: B018  (configures the in-process workers)
        with in_process_workers(ctx.broker):
            run_control.start(ctx.engine, ctx.broker, plan.run_id)
            for _, p in run_control.run_progress(ctx.engine, plan.run_id).stages:
                _finish(ctx, p.job_id)
        from imshift.workers.relay import map_ids
        with ctx.engine.connect() as conn:
            ids = {"user": map_ids(conn, [plan.run_id], "user", set(old.users), True),
                   "group": map_ids(conn, [plan.run_id], "group", set(old.groups), True)}
        assert len(ids["user"]) == users and len(ids["group"]) == groups, ids
        new.users = [ids["user"][u] for u in old.users]
        new.groups = [ids["group"][g] for g in old.groups]
        bridges.add(ctx.engine, source_app="old", app="new", run_id=plan.run_id, both_ways=both_ways,
                    hold=hold, settle=settle)
        ctx.engine.dispose()
        yield Bridged(old, new, database_url, env, plan.run_id, ids)


@contextlib.contextmanager
def sandbox_process(vendor_name: str, log: Path, rates: dict[str, float] | None = None,
                    latency: float = 0.0) -> Iterator[str]:
    """`imshift sandbox --vendor V [--rate OP=N ...] --latency S` on a free port; yields its base URL."""
    port = free_port()
    limits = [a for op, n in (rates or {}).items() for a in ("--rate", f"{op}={n}")]
    with log.open("a") as out:
        box = subprocess.Popen([sys.executable, "-m", "imshift.cli", "sandbox", "--vendor", vendor_name,
                                "--port", str(port), "--latency", str(latency), *limits],
                               stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    PIDS[url] = box.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            assert box.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/_sandbox/stats", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the {vendor_name} sandbox did not start: {log.read_text()[-2000:]}"
            time.sleep(0.05)
        yield url
    finally:
        PIDS.pop(url, None)
        box.terminate()
        try:
            box.wait(10)
        except subprocess.TimeoutExpired:
            box.kill()
            box.wait(5)


def _fields(config: Any) -> dict[str, Any]:
    import dataclasses
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None and not callable(getattr(config, f.name))}


def _finish(ctx: Any, job_id: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = wait_until_done(ctx, job_id, timeout)
        if p.status == "finished":
            return
        time.sleep(0.05)
    raise AssertionError(f"stage job {job_id} did not finish")


@contextlib.contextmanager
def serving(b: Bridged, log: Path, extra_env: dict[str, str] | None = None,
            port: int | None = None) -> Iterator[subprocess.Popen]:
    """`imshift serve` on a free port (embedded: it relays in its own
    process); the feeds of both sides point at it."""
    port = port or free_port()
    with log.open("a") as out:
        server = subprocess.Popen([sys.executable, "-m", "imshift.cli", "serve", "--port", str(port)],
                                  env={**b.env, **(extra_env or {})}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    b.server_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(b.server_url, server, log)
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


@contextlib.contextmanager
def working(b: Bridged, log: Path, extra_env: dict[str, str], processes: int = 2,
            threads: int = 4) -> Iterator[subprocess.Popen]:
    """`imshift worker --processes N` (`extra_env` names REDIS_URL): the
    pool that relays when `imshift serve` runs with Redis. Yields once every
    process is ready; SIGTERM stops the pool and its processes."""
    with log.open("a") as out:
        pool = subprocess.Popen([sys.executable, "-m", "imshift.cli", "worker", "--processes", str(processes),
                                 "--threads", str(threads)], env={**b.env, **extra_env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_workers(pool, log, processes)
        yield pool
    finally:
        if pool.poll() is None:
            pool.terminate()
            try:
                pool.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait(10)


def worker_processes(pool: subprocess.Popen) -> set[int]:
    """The pool's worker processes (its children)."""
    path = Path(f"/proc/{pool.pid}/task/{pool.pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def wait_for_workers(pool: subprocess.Popen, log: Path, processes: int, ready: int | None = None,
                     timeout: float = 60) -> None:
    """Until `ready` processes in all have said they are ready (default:
    `processes`) and the pool has `processes` children."""
    deadline = time.monotonic() + timeout
    while (log.read_text().count("Worker process is ready") < (ready or processes)
           or len(worker_processes(pool)) < processes):
        assert pool.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/api/bridges", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"imshift serve did not answer within {timeout} s: {log.read_text()[-3000:]}")


@dataclass
class Sent:
    side: str  # "old" or "new": where the client sent it
    sender: str
    to: str
    group: bool
    text: str
    msg_id: str = ""
    at: float = 0.0  # when the client's send returned (the source accepted it)


async def send_all(side: Side, plan: list[Sent], rate: float) -> None:
    """Each message of `plan` from a simulated client of `side`, at `rate` a second."""
    async with httpx.AsyncClient(timeout=10) as http:
        start = time.monotonic()
        for n, m in enumerate(plan):
            wait = start + n / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            reply = await http.post(f"{side.url}/_sandbox/client/send",
                                    json={"from": m.sender, "to": m.to, "group": m.group, "text": m.text})
            assert reply.status_code == 200, reply.text
            m.msg_id, m.at = str(reply.json()["msg_id"]), time.time()


def received_texts(side: Side, users: list[str]) -> dict[str, list[str]]:
    """Each user's inbox texts on `side`, oldest first; not what the user sent
    (some vendors show a group message in its sender's inbox too)."""
    return {u: [m.get("text") for m in side.inbox(u) if m.get("kind") == "text" and str(m.get("from")) != u]
            for u in users}


def wait_for(check, timeout: float, what: str, pause: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not within {timeout} s")
        time.sleep(pause)
