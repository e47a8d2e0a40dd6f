"""Cancelling a schedule's fire while it fans out: the batches not yet sent
end `cancelled` and are never sent later, and the history keeps the fire
with its counts. Real in-process workers against the NetEase sandbox."""

import asyncio
import time

from imshift.jobs import control, schedules
from imshift.jobs.progress import progress
from imshift.jobs.schedules import Firing
from imshift.vendors.operations import encode_message
from imshift.vendors.vocabulary import Message, Profile
from imshift.workers.broker import QUEUE
from imshift.workers.embedded import in_process_workers

from helpers import context


def test_cancelling_a_running_fire_stops_its_batches_at_once(database_url, tmp_path):
    ctx = context(database_url, chunk_size=500,
                  apps={"ne": {"vendor": "netease", "sandbox": True, "rates": {"send": 1.0, "register": 5000.0}}})
    to = tmp_path / "to.txt"
    to.write_text("".join(f"fan_{i:05d}\n" for i in range(1500)), encoding="utf-8")
    box = ctx.sandbox("ne")

    async def register():
        client = ctx.client("ne")
        done = await client.register_users([Profile(f"fan_{i:05d}") for i in range(1500)] + [Profile("admin")])
        await client.http.aclose()
        return done

    assert all(r.succeeded for r in asyncio.run(register()))
    now = time.time()
    schedule_id = schedules.add(ctx.engine, ctx.target("ne"), command="send", now=now, at=now, params={
        "sender": "admin", "message": encode_message(Message(text="sale!")), "to": str(to)})
    ctx.runtime  # noqa: B018  (configures the workers)
    with in_process_workers(ctx.broker):
        firing = Firing(ctx.engine, ctx.target, lambda j: control.start(ctx.engine, ctx.broker, j), 500)
        [fired] = schedules.fire_due(firing, now + 1)
        assert fired.state == "fired"
        deadline = time.monotonic() + 30
        # The first batch's call is at the vendor: the next is let go a
        # second later. (Waiting for its items to be recorded ok, a loaded
        # machine had let all three go before the cancel.)
        while box.calls["send"] < 1:
            assert time.monotonic() < deadline, progress(ctx.engine, fired.job_id)
            time.sleep(0.01)
        control.cancel(ctx.engine, fired.job_id)
        # A call already let go when the cancel came ends, and its chunk
        # records it: every queued chunk message has been handled.
        ctx.broker.join(QUEUE, timeout=60_000, fail_fast=False)
        delivered = sum(len(box.inbox(f"fan_{i:05d}")) for i in range(1500))
        time.sleep(3)  # a lagging worker would send more batches now
        assert sum(len(box.inbox(f"fan_{i:05d}")) for i in range(1500)) == delivered
    p = progress(ctx.engine, fired.job_id)
    assert p.status == "cancelled"
    assert p.counts.get("ok", 0) == delivered < 1500
    assert p.counts.get("ok", 0) + p.counts.get("cancelled", 0) + p.counts.get("unknown", 0) == 1500
    assert p.counts.get("pending", 0) == p.counts.get("claimed", 0) == 0
    [fire] = schedules.history(ctx.engine, schedule_id)
    assert (fire.state, fire.job_id, fire.job_status) == ("fired", fired.job_id, "cancelled")
    ctx.engine.dispose()
