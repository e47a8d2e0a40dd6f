"""What a worker process needs to run chunks, given to it once at start-up.

The faces (CLI, `imshift worker`) build a Runtime from the settings; the
workers package itself never reads configuration, so it stays testable with
whatever engine, broker and vendor clients a test hands it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import dramatiq
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine

from imshift.vendors.client import VendorClient

from .ratelimit import last_slot

# Builds the vendor client (throttled by the runtime's limiter) for a configured app name.
ClientFactory = Callable[[str], VendorClient]

SECRET_FIELDS = ("token", "password")  # result fields kept only encrypted


@dataclass
class Tuning:
    """The engine's knobs with their defaults, which the settings take as theirs."""

    chunk_size: int = 200
    lease_seconds: float = 120.0
    max_attempts: int = 8
    concurrency: int = 128  # vendor calls in flight per process
    stale_after: float = 60.0
    claim_seconds: float = 0.5  # quota seconds of items a process holds claimed per operation
    unreachable_after: float = 15.0  # every call to an app failing to connect this long stops its jobs


# Set by a chunk around one batch call that is not safe to repeat: awaited
# once, after the rate limiter lets the call go and before it is sent, to
# record that it may reach the vendor from now on.
before_send: contextvars.ContextVar[Callable[[], Any] | None] = contextvars.ContextVar(
    "imshift_before_send", default=None)


# Set by a chunk around one batch: called each time one of its calls has its
# rate-limiter slot; the chunk counts the first (see ClaimBudget).
slot_taken: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "imshift_slot_taken", default=None)


def announcing(throttle: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
    """`throttle`, then the current batch's `slot_taken` and `before_send` (once)."""

    async def throttled(key: str, weight: int) -> None:
        last_slot.set(None)  # set again by a RateLimiter's throttle
        await throttle(key, weight)
        went = slot_taken.get()
        if went is not None:
            went()
        hook = before_send.get()
        if hook is not None:
            await hook()
            # The hook (a database write) took so long that the call could
            # land in the window after its slot's: a new slot, never a call
            # over the limit (bench/README.md, bridge: over-limit replies).
            slot = last_slot.get()
            if slot is not None:
                latest, again = slot
                while asyncio.get_running_loop().time() > latest:
                    latest = await again()

    return throttled


class ClaimBudget:
    """Items one process holds claimed and not yet sent on their way, for one
    app and operation: what is claimed waits for the rate limiter, so
    claiming more than the quota serves soon only makes claims (and leases)
    wait. An item counts until its call has its slot (`slot_taken`), not
    until it is recorded: counted to the end, the vendor's reply time came
    out of the quota's (bench/README.md, quota)."""

    def __init__(self, size: int):
        self.free = size
        self._changed = asyncio.Event()

    async def take(self, n: int) -> None:
        while self.free < n:
            self._changed.clear()
            await self._changed.wait()
        self.free -= n

    def give(self, n: int) -> None:
        self.free += n
        self._changed.set()


@dataclass
class Runtime:
    engine: Engine
    broker: dramatiq.Broker
    clients: ClientFactory
    limiter: Any  # workers.ratelimit.RateLimiter
    cipher: Fernet | None = None
    tuning: Tuning = field(default_factory=Tuning)
    jobs: dict[int, Any] = field(default_factory=dict, repr=False)  # job id -> workers.chunk.JobView
    # app -> (when its calls began failing to connect, how many did, the last message)
    unreachable: dict[str, tuple[float, int, str]] = field(default_factory=dict, repr=False)
    _loop_state: dict = field(default_factory=dict, repr=False)
    # What changes when the settings the clients come from are edited (the
    # config file's stamp), checked at each lookup; None: they never change.
    settings_stamp: Callable[[], Any] | None = None

    def remember_job(self, job_id: int, view: Any) -> None:
        if len(self.jobs) >= 1024:  # a long-lived worker sees many jobs: keep the recent ones
            self.jobs.clear()
        self.jobs[job_id] = view

    def _state(self) -> dict[str, Any]:
        """Per event loop: HTTP pools and semaphores belong to one loop."""
        loop = asyncio.get_running_loop()
        state = self._loop_state.get(id(loop))
        if state is None or state["loop"] is not loop:  # a new loop may reuse an old id
            state = {"loop": loop, "clients": {},
                     "gate": asyncio.Semaphore(self.tuning.concurrency)}
            self._loop_state[id(loop)] = state
        return state

    def client(self, app: str) -> VendorClient:
        state = self._state()
        if self.settings_stamp is not None:  # settings edited since: clients made again from them
            stamp = self.settings_stamp()
            if state.get("stamp", stamp) != stamp:
                state["clients"] = {}
            state["stamp"] = stamp
        clients = state["clients"]
        if app not in clients:
            client = clients[app] = self.clients(app)
            client.throttle = announcing(client.throttle)
        return clients[app]

    def gate(self) -> asyncio.Semaphore:
        """Caps vendor calls in flight in this process."""
        return self._state()["gate"]

    def claim_budget(self, app: str, key: str, size: int) -> ClaimBudget:
        budgets = self._state().setdefault("budgets", {})
        return budgets.setdefault((app, key), ClaimBudget(size))

    def seal(self, data: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """Split a vendor result into what may be stored plainly and the
        secrets, encrypted (or dropped when no key is configured)."""
        plain = {k: v for k, v in data.items() if k not in SECRET_FIELDS}
        secrets = {k: data[k] for k in SECRET_FIELDS if k in data}
        if not secrets or self.cipher is None:
            return plain, None
        return plain, self.cipher.encrypt(json.dumps(secrets).encode())

    def unseal(self, blob: bytes | None) -> dict[str, Any]:
        if blob is None or self.cipher is None:
            return {}
        return json.loads(self.cipher.decrypt(blob))


_current: Runtime | None = None


def configure(runtime: Runtime) -> Runtime:
    global _current
    _current = runtime
    return runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("imshift workers are not configured: start them with `imshift worker`")
    return _current
