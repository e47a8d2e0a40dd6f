"""The engine's cap on calls in flight (vendors/client.py `in_flight`): a
call holds it from the end of its throttle's wait to its reply, and one
that waited too long for it takes a new slot."""

import asyncio

import httpx

from imshift.vendors.client import GATE_LATE, VendorClient, in_flight
from tiny_sandbox import TinySandbox


class TinyClient(VendorClient):
    vendor = "tiny"
    capabilities = frozenset()


def client_with(throttle) -> TinyClient:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=TinySandbox().app))
    return TinyClient(None, http, throttle=throttle)


async def until(condition, deadline: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.001)


async def test_a_call_waiting_for_its_slot_holds_no_place():
    slot = asyncio.Event()
    waiting: list[str] = []

    async def throttle(key: str, weight: int) -> None:
        if key == "slow":
            waiting.append(key)
            await slot.wait()

    client = client_with(throttle)
    in_flight.set(asyncio.Semaphore(1))  # one call in flight at a time
    slow = asyncio.create_task(client._request("slow", "POST", "http://t/call"))
    await until(lambda: waiting)
    # The only place is free while the slow call waits for its slot.
    assert (await asyncio.wait_for(client._request("fast", "POST", "http://t/call"), 5)).status == 200
    assert not slow.done()
    slot.set()
    assert (await slow).status == 200
    assert in_flight.get()._value == 1  # every place given back


async def test_a_call_kept_waiting_for_a_place_takes_a_new_slot():
    slots: list[str] = []

    async def throttle(key: str, weight: int) -> None:
        slots.append(key)

    client = client_with(throttle)
    gate = asyncio.Semaphore(1)
    in_flight.set(gate)
    await gate.acquire()  # the place is taken, as by a slow call
    call = asyncio.create_task(client._request("register", "POST", "http://t/call"))
    await until(lambda: slots)
    await asyncio.sleep(2 * GATE_LATE)  # longer than a slot's slack
    gate.release()
    assert (await call).status == 200
    assert slots == ["register", "register"]  # its first slot may have passed: it took a second
    assert gate._value == 1


async def test_without_a_cap_calls_go_as_before():
    client = client_with(None)
    assert in_flight.get() is None
    assert (await client._request("register", "POST", "http://t/call")).status == 200
