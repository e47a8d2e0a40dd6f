"""An item's next state from what the vendor answered for it."""

from __future__ import annotations

import random
from typing import Any

from imshift.models.tables import ItemState
from imshift.vendors.vocabulary import Outcome, Result

from .runtime import Runtime


def decide(runtime: Runtime, row: Any, result: Result, repeat_safe: bool, now: float,
           unsure: str = "it may have reached the vendor") -> dict[str, Any]:
    """The item's next state from the vendor's outcome. `unsure` says what a
    call cut off may have done (the operation table's words)."""
    outcome = {"seq": row.seq, "code": result.code, "message": result.message, "not_before": None}
    o = result.outcome
    if o.succeeded:
        plain, secret = runtime.seal(result.data)
        return {**outcome, "state": ItemState(o.value), "result": plain or None, "secret": secret}
    if o is Outcome.REJECTED:
        return {**outcome, "state": ItemState.REJECTED}
    if o is Outcome.AUTH:  # not the item's fault: it waits for the job to resume
        return {**outcome, "state": ItemState.PENDING}
    if o is Outcome.RETRYABLE and result.maybe_delivered and not repeat_safe:
        return {**outcome, "state": ItemState.UNKNOWN,
                "message": f"{result.message}; {unsure}, so it is not re-sent "
                           "(`imshift retry --unknown` sends it again)"}
    # A rate limit or a call that never connected says nothing about the item
    # (and a vendor down for everyone stops the job): a larger budget.
    budget = runtime.tuning.max_attempts * (4 if o is Outcome.RATE_LIMITED or result.code == "network"
                                            else 1)
    if row.attempts >= budget:
        return {**outcome, "state": ItemState.FAILED,
                "message": f"gave up after {row.attempts} attempts: {result.message}"}
    wait = result.retry_after if result.retry_after is not None else _backoff(row.attempts)
    return {**outcome, "state": ItemState.PENDING, "not_before": now + wait}


def _backoff(attempts: int) -> float:
    return min(30.0, 0.5 * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
