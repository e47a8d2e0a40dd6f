"""`imshift demo`: sample users round-tripped through every vendor sandbox.

Registers users with Unicode names (and a few bad rows) on each vendor's
sandbox, reads them back, issues tokens, sends everyone a message with the
vendor's batch call, then moves the users of a vendor that can list its
users onto one that assigns its own ids, keeping the id map.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Sequence

from rich.console import Console
from rich.table import Table

from imshift.vendors.base import Message, Operation, Profile, Result
from imshift.vendors.client import VendorClient
from imshift.vendors.registry import VENDORS

NAMES = ["李雷", "Zoë", "Ólafur", "Мария", "محمد", "さくら", "🚀 Rocket", "Jean-Luc", "김민준", "Αθηνά"]
CONCURRENCY = 8
SLICE = 100


def sample_profiles(count: int) -> list[Profile]:
    users = [Profile(f"user_{i:06d}", f"{NAMES[i % len(NAMES)]} {i}") for i in range(count)]
    bad = [Profile("bad id with spaces!", "Bad Row"), Profile("x" * 200, "Too Long")]
    return users + bad


async def in_slices(call, items: Sequence, *args) -> list:
    """Run `call(slice, *args)` over slices of items, a few at a time, in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(part):
        async with gate:
            return await call(part, *args)

    parts = await asyncio.gather(*(one(items[i:i + SLICE]) for i in range(0, len(items), SLICE)))
    return [r for part in parts for r in part]


def outcome_counts(results: Sequence[Result]) -> str:
    counts = Counter(str(r.outcome) for r in results)
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


async def round_trip(client: VendorClient, profiles: list[Profile]) -> tuple[list[str], dict]:
    registered = await in_slices(client.register_users, profiles)
    ids = [r.data.get("user_id", p.user_id) for p, r in zip(profiles, registered) if r.succeeded]
    by_id = {r.data.get("user_id", p.user_id): p for p, r in zip(profiles, registered) if r.succeeded}
    read = await in_slices(client.get_profiles, ids) if client.supports(Operation.GET_PROFILES) else []
    intact = sum(1 for got in read if got is not None and got.name == by_id[got.user_id].name)
    tokens = await in_slices(client.issue_tokens, ids) if client.supports(Operation.ISSUE_TOKEN) else []
    sent = await client.send(ids[0], ids[1:], Message(text="你好 from imshift 👋")) \
        if client.supports(Operation.SEND) and len(ids) > 1 else []
    rejected = [(p.user_id, r.message) for p, r in zip(profiles, registered) if not r.succeeded]
    return ids, {
        "register": outcome_counts(registered),
        "read back intact": f"{intact}/{len(ids)}" if read else "n/a",
        "tokens": outcome_counts(tokens) if tokens else "n/a",
        "send": outcome_counts(sent) if sent else "n/a",
        "rejected rows": rejected,
    }


async def run_demo(count: int, console: Console) -> None:
    profiles = sample_profiles(count)
    console.print(f"[bold]imshift demo[/bold]: {count} users + {len(profiles) - count} bad rows "
                  f"through {len(VENDORS)} vendor sandboxes (in-process, no network)\n")
    table = Table(title="Round trip per vendor")
    for column in ("vendor", "register", "read back intact", "tokens", "send", "messages delivered",
                   "vendor calls"):
        table.add_column(column)
    reasons = {}
    clients = {}
    for v in VENDORS.values():
        box = v.sandbox()
        client = box.client(f"http://{v.name}.sandbox.test")
        ids, summary = await round_trip(client, profiles)
        delivered = sum(len(box.inbox(i)) for i in ids)
        table.add_row(v.title, summary["register"], summary["read back intact"], summary["tokens"],
                      summary["send"], str(delivered), str(box.calls.total()))
        reasons[v.title] = summary["rejected rows"]
        clients[v.name] = client
    console.print(table)
    for title, rows in reasons.items():
        for user_id, message in rows:
            console.print(f"  {title}: row {user_id[:24]!r} rejected: {message}")
    await migrate_demo(clients, console)


async def migrate_demo(clients: dict[str, VendorClient], console: Console) -> None:
    """Read every user from a vendor that can list them and register them on a
    fresh sandbox of another vendor; show part of the id map."""
    source = next((c for c in clients.values() if c.supports(Operation.LIST_USERS)), None)
    target_vendor = next((v for v in reversed(VENDORS.values())
                          if source is not None and v.name != source.vendor), None)
    if source is None or target_vendor is None:
        return
    target_box = target_vendor.sandbox()
    target = target_box.client(f"http://{target_vendor.name}.fresh.sandbox.test")
    ids = [user_id async for user_id in source.list_users()]
    found = await in_slices(source.get_profiles, ids)
    profiles = [p for p in found if p is not None]
    results = await in_slices(target.register_users, profiles)
    console.print(f"\n[bold]migration {source.vendor} -> {target.vendor}[/bold]: {len(profiles)} users "
                  f"listed at the source; at the target: {outcome_counts(results)}")
    for p, r in list(zip(profiles, results))[:3]:
        console.print(f"  id map: {p.user_id} -> {r.data.get('user_id', p.user_id)}  ({p.name})")
