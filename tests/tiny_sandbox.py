"""A one-endpoint vendor, enough to exercise what all sandboxes share
(windows, faults, counters) and whatever calls them."""

import asyncio
import time
from collections import Counter

from imshift.vendors.http import http_client
from imshift.vendors.sandbox.common import Endpoint, Sandbox


class TinySandbox(Sandbox):
    vendor = "tiny"

    def endpoints(self):
        return [Endpoint("/call", "register", lambda params, call: {})]


async def hammer(throttle, url, tasks, end, key="register", pause=0.0):
    """`tasks` callers each throttle for `key`, then POST to the sandbox's
    /call, until `end` (epoch seconds), waiting `pause` s after each call.
    The replies' status codes, counted."""
    statuses: Counter[int] = Counter()
    async with http_client() as http:
        async def caller():
            while time.time() < end:
                await throttle(key, 1)
                if time.time() >= end:
                    break
                statuses[(await http.post(f"{url}/call")).status_code] += 1
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(caller() for _ in range(tasks)))
    return statuses
