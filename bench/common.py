"""What the benchmarks share: services they start and stop themselves,
worker processes, sandbox processes, and the closing key=value line."""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlencode

import httpx
from testsupport import free_port

ROOT = Path(__file__).resolve().parents[1]


def figures(**values) -> None:
    """The benchmark's last line: its figures as key=value pairs."""
    def text(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    print(" ".join(f"{k}={text(v)}" for k, v in values.items()), flush=True)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB



def wait_for_port(port: int, process: subprocess.Popen | None = None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {seconds} s")


@contextlib.contextmanager
def sandbox_process(vendor: str, *, rates: Mapping[str, float] | None = None,
                    latency: float = 0.0, jitter: float = 0.0) -> Iterator[str]:
    """`imshift sandbox` for one vendor in its own process (so its CPU is not
    ours); yields its base URL. Read its counters with `sandbox_stats`."""
    port = free_port()
    command = [sys.executable, "-m", "imshift.cli", "sandbox", "--vendor", vendor,
               "--port", str(port), "--latency", str(latency), "--jitter", str(jitter)]
    for op, rate in (rates or {}).items():
        command += ["--rate", f"{op}={rate}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=ROOT)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def netease_register(config: Any, user_id: str, name: str, avatar: str = "") -> tuple[dict[str, str], str]:
    """The signature headers and the form of one NetEase user/create call,
    signed as vendors/netease.py signs it, for loops with no vendor client."""
    from imshift.vendors.netease import FORM_CONTENT_TYPE, checksum

    nonce, curtime = secrets.token_hex(16), str(int(time.time()))
    headers = {"Content-Type": FORM_CONTENT_TYPE, "AppKey": config.app_key, "Nonce": nonce,
               "CurTime": curtime, "CheckSum": checksum(config.app_secret, nonce, curtime)}
    form = {"accid": user_id.lower(), "name": name, "icon": avatar}
    return headers, urlencode({k: v for k, v in form.items() if v})


def job_progress(engine: Any, job_id: int) -> Any:
    """jobs/progress.py `progress` of a job the benchmark made (so never None)."""
    from imshift.jobs.progress import progress

    p = progress(engine, job_id)
    if p is None:
        raise RuntimeError(f"job {job_id} is gone")
    return p


def sandbox_stats(base_url: str) -> dict:
    return httpx.get(f"{base_url}/_sandbox/stats", timeout=10).json()


@contextlib.contextmanager
def worker_processes(env: Mapping[str, str], processes: int, threads: int = 8,
                     log: Path | None = None) -> Iterator[subprocess.Popen]:
    """`imshift worker` as a user starts it; stopped (SIGTERM) on exit."""
    out = open(log, "a") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "imshift.cli", "worker", "--processes", str(processes),
         "--threads", str(threads)], env={**os.environ, **env}, stdout=out,
        stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def claim_to_record_seconds(engine, job_id: int) -> list[float]:
    """Seconds from each item's last claim to its recorded outcome, sorted."""
    from sqlalchemy import select

    from imshift.models.tables import Item

    items = Item.__table__
    with engine.connect() as conn:
        return sorted(u - c for c, u in conn.execute(
            select(items.c.claimed_at, items.c.updated_at).where(
                items.c.job_id == job_id, items.c.claimed_at.is_not(None))))


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(share * (len(sorted_values) - 1))))
    return sorted_values[index]
