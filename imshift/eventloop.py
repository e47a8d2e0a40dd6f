"""uvloop for imshift's own processes (the `imshift` command, its worker
processes, the benchmarks), where it is installed: libuv's loop costs less
CPU a vendor call than asyncio's, which decides how much of a fast vendor's
quota two cores can use (bench/README.md, "`quota` and `overhead` on
uvloop"). uvicorn takes it by itself once installed (its loop "auto").

Set as the policy, not passed as a loop factory, because Dramatiq's event
loop thread (the workers' async actors) makes its loop with
asyncio.new_event_loop(). Tests that call the CLI in their own process keep
asyncio's loop: only the entry points call this."""

from __future__ import annotations

import asyncio


def use_uvloop() -> bool:
    """Make new event loops uvloop's; False (asyncio's stay) where it is not
    installed, as on Windows, which it does not support."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
