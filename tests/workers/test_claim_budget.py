"""The claim budget (workers/runtime.py ClaimBudget) with the chunk's
`execute`, the real rate limiter and a NetEase sandbox that takes 0.3 s a
call: a batch's items leave the budget once its call has its slot, not when
the reply is in."""

import asyncio
from typing import NamedTuple

from dramatiq.brokers.stub import StubBroker
from sqlalchemy import create_engine

from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.vocabulary import Operation, Outcome
from imshift.workers.chunk import BudgetShare, JobView, execute
from imshift.workers.ratelimit import RateLimiter
from imshift.workers.runtime import ClaimBudget, Runtime


class Row(NamedTuple):
    seq: int
    key: str
    payload: dict


async def test_a_batch_leaves_the_claim_budget_when_its_call_has_a_slot():
    """The budget bounds items waiting for the limiter; counted until the
    reply, a vendor's reply time came out of the quota's (bench quota, 200
    calls/s at 0.45 s a reply: 0.660 of the quota before, 0.852 after)."""
    box = NeteaseSandbox(faults=Faults(latency=0.3))
    limiter = RateLimiter({"register": 200})
    client = box.client()
    client.throttle = limiter.throttle_for("nim")
    runtime = Runtime(engine=create_engine("sqlite://"), broker=StubBroker(),
                      clients=lambda app: client, limiter=limiter)
    job = JobView(1, Operation.REGISTER, "nim", {})
    rows = [Row(i, f"u{i}", {"name": f"User {i}"}) for i in range(8)]
    budget = ClaimBudget(8)
    await budget.take(8)
    share = BudgetShare(budget, 8)
    calls = asyncio.ensure_future(execute(runtime, runtime.client("nim"), job, rows, None, share.went))
    async with asyncio.timeout(30):
        while budget.free < 8 and not calls.done():
            await asyncio.sleep(0.005)
        assert not calls.done(), "the budget came back only with the replies"
        results = await calls
    assert [r.outcome for r in results] == [Outcome.OK] * 8
    assert share.left == 0 and budget.free == 8
    await client.http.aclose()
