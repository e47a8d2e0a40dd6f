"""The cut-over bridge end to end: simulated clients send on one vendor's
sandbox, its feed POSTs each message to a real `imshift serve` process, and
the message is read back from the other sandbox's inbox the way a client
reads it: exactly once, in each conversation's order, never echoed back."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict

import httpx
import pytest

from bridge_support import Sent, bridged, received_texts, send_all, serving, wait_for

pytestmark = pytest.mark.loopback
SETTLE = 1.0  # seconds (the default is 0.3: `python -m bench bridge` measures the lag with it)


def late_deliveries(db: str, settle: float) -> set[str]:
    """Texts whose message was stored more than `settle` after a later-sent
    message of the same conversation: it reached imshift after that one was
    already free to go (the vendor's, or this loaded machine's, delivery
    delay), so the bridge cannot have kept their order."""
    from sqlalchemy import create_engine, text

    from imshift.models.db import normalise_url
    engine = create_engine(normalise_url(db))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT from_app, conversation, sent_at_ms, received_at, content "
                                 "FROM bridge_messages ORDER BY sent_at_ms, id")).all()
    engine.dispose()
    late: set[str] = set()
    first_of_later: dict[tuple[str, str], float] = {}  # the earliest arrival among later-sent messages
    for row in reversed(rows):
        key = (row.from_app, row.conversation)
        if key in first_of_later and row.received_at > first_of_later[key] + settle:
            content = row.content if isinstance(row.content, dict) else json.loads(row.content)
            late.add(content.get("text"))
        first_of_later[key] = min(first_of_later.get(key, row.received_at), row.received_at)
    return late


def postgres(request) -> str:
    """The session's throwaway PostgreSQL database, emptied after the test."""
    url = request.getfixturevalue("postgres_url")

    def empty() -> None:
        from sqlalchemy import create_engine, text
        from sqlmodel import SQLModel

        from imshift.models.db import normalise_url
        engine = create_engine(normalise_url(url))
        SQLModel.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()

    request.addfinalizer(empty)
    return url


def conversations(b, side: str, pairs: int, groups: bool, count: int, seed: int = 7) -> list[Sent]:
    """`count` messages over `pairs` one-to-one conversations (and each group
    when `groups`), interleaved at random; each text names its conversation
    and its place in it."""
    s = b.old if side == "old" else b.new
    rnd = random.Random(seed)
    convs = [(s.users[i], s.users[(i + 1) % len(s.users)], False) for i in range(pairs)]
    if groups:
        convs += [(s.users[g], gid, True) for g, gid in enumerate(s.groups)]
    seen: dict[int, int] = defaultdict(int)
    plan = []
    for _ in range(count):
        c = rnd.randrange(len(convs))
        sender, to, group = convs[c]
        plan.append(Sent(side, sender, to, group, f"{side}:c{c}#{seen[c]}"))
        seen[c] += 1
    return plan


def expected(b, plan: list[Sent]) -> dict[str, list[str]]:
    """Per user of the other side: the texts it must receive, in order."""
    other, this = (b.new, b.old) if plan[0].side == "old" else (b.old, b.new)
    users = dict(zip(this.users, other.users, strict=True))
    members = _members(b, this)
    want: dict[str, list[str]] = defaultdict(list)
    for m in plan:
        if m.group:
            for member in members[m.to]:
                if member != m.sender:
                    want[users[member]].append(m.text)
        else:
            want[users[m.to]].append(m.text)
    return want


def _members(b, side) -> dict[str, list[str]]:
    return {gid: [side.users[(g + i) % len(side.users)] for i in range(3)]
            for g, gid in enumerate(side.groups)}


def by_conversation(texts) -> dict[str, list[str]]:
    """Texts per conversation, in the order given: conversations run in
    parallel, so only the order within each is the source's."""
    out: dict[str, list[str]] = defaultdict(list)
    for text in texts:
        out[text.partition("#")[0]].append(text)
    return dict(out)


def check_arrived(side, want: dict[str, list[str]], prefix: str, last: dict | None = None,
                  late: set[str] = frozenset()):
    """Every expected text once, in order; nothing else with `prefix`.
    `last` keeps the first user whose inbox differs, for the failure message.
    `late`: texts the feed delivered after a later message of their
    conversation had waited out --settle (see `late_deliveries`): no relay
    can put those back in place, so they may stand anywhere after it."""
    got = received_texts(side, list(want))
    mine = {u: by_conversation(t for t in texts if t and t.startswith(prefix)) for u, texts in got.items()}

    def same(u: str) -> bool:
        have, need = mine[u], by_conversation(want[u])
        if have == need:
            return True
        return {c: sorted(t) for c, t in have.items()} == {c: sorted(t) for c, t in need.items()} and all(
            [t for t in have[c] if t not in late] == [t for t in need[c] if t not in late] for c in need)

    differs = [u for u in want if not same(u)]
    if last is not None and differs:
        last.update(user=differs[0], want=want[differs[0]], got=mine[differs[0]], users=len(differs))
    return None if differs else mine


# Each vendor once as the source and once as the target.
@pytest.mark.parametrize("old_vendor,new_vendor,database", [
    ("netease", "rongcloud", "sqlite"), ("rongcloud", "openim", "sqlite"), ("openim", "maxim", "sqlite"),
    ("maxim", "netease", "sqlite"), ("rongcloud", "netease", "postgresql")])
def test_messages_cross_one_way_exactly_once_in_order(tmp_path, request, old_vendor, new_vendor, database):
    db = f"sqlite:///{tmp_path}/imshift.db" if database == "sqlite" else postgres(request)
    # Order holds while the vendor's deliveries arrive within --settle of each
    # other; on this machine, loaded by the rest of the suite, a delivery can
    # take a second to be answered, so the tests give it room.
    with bridged(tmp_path, db, old_vendor, new_vendor, users=40, groups=4, settle=SETTLE) as b:
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url), repeat=0.2, reorder=0.05)
            plan = conversations(b, "old", pairs=20, groups=True, count=300)
            asyncio.run(send_all(b.old, plan, rate=100))
            want, last = expected(b, plan), {}
            wait_for(lambda: check_arrived(b.new, want, "old:", last, late_deliveries(db, SETTLE)), 90,
                     lambda: f"all 300 messages at the new side: {last}")
            status = httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()
        [way] = status["directions"]
        assert way["relayed"] == 300 and way["failed"] == 0 and way["unknown"] == 0, status
        assert way["duplicates"] > 0  # the feed repeated a fifth of its deliveries: each dropped
        # Nothing came back to the old side: its users' inboxes hold only what the clients sent there.
        old_texts = received_texts(b.old, b.old.users)
        assert all(len(texts) == len(set(texts)) for texts in old_texts.values())


def test_both_ways_many_conversations_exactly_once_in_order_without_echoes(tmp_path):
    """Clients on both vendors at once, 100 messages/s in all, over 500
    conversations (250 a side): each message reaches the other side once,
    in its conversation's order, and nothing the bridge sent comes back
    (OpenIM's webhooks report the bridge's own sends: each is dropped).
    Both sandboxes, their clients and the server share this machine's 2
    cores with the rest of the suite, so the rate is half the benchmark's:
    `python -m bench bridge` runs 10,000 at 200 and 1,000 a second."""
    count, pairs = 2000, 250
    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "rongcloud", "openim", users=pairs, both_ways=True, settle=2 * SETTLE) as b:
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url), repeat=0.1, reorder=0.05, retries=3, retry_delay=0.5)
            b.new.feed_to(b.new.hook(b.server_url), repeat=0.1, reorder=0.05, retries=3, retry_delay=0.5)
            old_plan = conversations(b, "old", pairs=pairs, groups=False, count=count // 2, seed=1)
            new_plan = conversations(b, "new", pairs=pairs, groups=False, count=count // 2, seed=2)

            async def both():
                await asyncio.gather(send_all(b.old, old_plan, rate=50), send_all(b.new, new_plan, rate=50))

            asyncio.run(both())
            for side, plan, prefix in ((b.new, old_plan, "old:"), (b.old, new_plan, "new:")):
                want, last = expected(b, plan), {}
                wait_for(lambda side=side, want=want, prefix=prefix, last=last:
                         check_arrived(side, want, prefix, last, late_deliveries(db, 2 * SETTLE)), 180,
                         lambda prefix=prefix, last=last: f"{prefix} messages at the other side: {last}; feeds: "
                                 f"{httpx.get(b.old.url + '/_sandbox/feed/stats').json()} "
                                 f"{httpx.get(b.new.url + '/_sandbox/feed/stats').json()}")
            status = httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()
        for way in status["directions"]:
            assert way["relayed"] == count // 2 and way["failed"] == way["unknown"] == 0, status
        assert status["directions"][1]["echoes"] >= count // 2  # each relay into OpenIM came back (some twice)
        # No echo: each side's inboxes hold its own clients' messages once, and the other side's once.
        for side in (b.old, b.new):
            for user, texts in received_texts(side, side.users).items():
                assert len(texts) == len(set(texts)), (user, texts)


def test_forged_stale_malformed_oversized_and_unknown_deliveries_are_refused_and_counted(tmp_path):
    """Against a real `imshift serve`: each bad delivery gets its status,
    nothing is stored or relayed, and each is counted as refused."""
    import json
    import time

    from imshift.vendors.feeds import MAX_FEED_BYTES
    from imshift.vendors.netease_feed import body_md5, copy_checksum

    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "netease", "rongcloud", users=4) as b:
        config = b.old.box.config(b.old.url)
        sender, to = b.old.users[0], b.old.users[1]

        def signed(body: bytes, *, secret=config.app_secret, curtime=None):
            curtime = curtime or str(int(time.time() * 1000))
            md5 = body_md5(body)
            return {"Content-Type": "application/json", "AppKey": config.app_key, "CurTime": curtime,
                    "MD5": md5, "CheckSum": copy_checksum(secret, md5, curtime)}

        event = json.dumps({"eventType": "1", "convType": "PERSON", "fromAccount": sender, "to": to,
                            "msgidServer": "9001", "msgTimestamp": str(int(time.time() * 1000)),
                            "msgType": "TEXT", "body": "forged?"}).encode()
        with serving(b, tmp_path / "serve.log"):
            hook = f"{b.server_url}/hooks/old"
            cases = {
                "forged": (hook, event, signed(event, secret="not-the-secret")),
                "stale": (hook, event, signed(event, curtime=str(int((time.time() - 3600) * 1000)))),
                "malformed": (hook, b"{not json", signed(b"{not json")),
                "oversized": (hook, b"x" * (MAX_FEED_BYTES + 1), signed(b"x" * (MAX_FEED_BYTES + 1))),
                "unknown app": (f"{b.server_url}/hooks/nobody", event, signed(event)),
            }
            answers = {name: httpx.post(url, content=body, headers=headers, timeout=10).status_code
                       for name, (url, body, headers) in cases.items()}
            # The same event signed right is taken: the refusals were the signature's, age's, body's.
            taken = httpx.post(hook, content=event, headers=signed(event), timeout=10).status_code
            status = wait_for(lambda: (s := httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json())
                              ["directions"][0]["relayed"] == 1 and s, 30, "the good delivery relayed")
        assert answers == {"forged": 401, "stale": 401, "malformed": 400, "oversized": 413,
                           "unknown app": 404}, answers
        assert taken == 200
        way = status["directions"][0]
        assert way["refused"] == 4 and way["relayed"] == 1 and way["pending"] == 0, way
        assert [m["text"] for m in b.new.inbox(b.ids["user"][to])] == ["forged?"]


def test_a_message_to_an_account_not_migrated_yet_is_held_then_fails_naming_it(tmp_path):
    """A user the run never moved: their message waits (held) for --hold,
    then ends failed naming the id; the conversation after it goes on."""
    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "netease", "rongcloud", users=4, hold=2.0) as b:
        import asyncio as aio

        from bridge_support import _register
        late = aio.run(_register(b.old, ["bu_late"]))[0]  # on the old side only
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url))
            plan = [Sent("old", late, b.old.users[0], False, "old:late#0"),
                    Sent("old", b.old.users[1], b.old.users[0], False, "old:ok#0")]
            asyncio.run(send_all(b.old, plan, rate=20))

            def direction():
                return httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()["directions"][0]

            # The two conversations relay in parallel, so each state is awaited on its own.
            wait_for(lambda: direction()["held"] == 1, 30, "the message from the unmigrated user held")
            wait_for(lambda: direction()["relayed"] == 1, 30, "the other conversation's message relayed")

            def failed():
                s = httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()
                return s if s["directions"][0]["failed"] == 1 else None

            status = wait_for(failed, 45, "the held message failed after --hold")
        [failure] = status["last_failures"]
        assert failure["code"] == "unmapped" and f"user {late}" in failure["message"], failure
        assert [m["text"] for m in b.new.inbox(b.new.users[0])] == ["old:ok#0"]


def sent_then_first_recalled(b, texts: list[str]) -> list[dict]:
    """The old side's first user sends `texts` to its second, and once all are
    relayed recalls the first: the new side's inbox once that recall is there."""
    plan = [Sent("old", b.old.users[0], b.old.users[1], False, text) for text in texts]
    asyncio.run(send_all(b.old, plan, rate=20))
    target = b.new.users[1]
    wait_for(lambda: len(b.new.inbox(target)) == len(plan), 45, "the messages relayed")
    reply = httpx.post(f"{b.old.url}/_sandbox/client/recall",
                       json={"from": b.old.users[0], "msg_id": plan[0].msg_id}, timeout=10)
    assert reply.status_code == 200, reply.text
    return wait_for(lambda: (i := b.new.inbox(target)) and i[0].get("recalled") and i, 45,
                    "the recall relayed")


# OpenIM as the source: its revoke webhook names the message by (conversationID,
# seq), which only its after-save webhook reported (vendors/openim_feed.py).
@pytest.mark.parametrize("old_vendor,new_vendor", [("netease", "rongcloud"), ("openim", "maxim")])
def test_a_recall_of_a_relayed_message_takes_it_back_at_the_target(tmp_path, old_vendor, new_vendor):
    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, old_vendor, new_vendor, users=4) as b:
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url))
            inbox = sent_then_first_recalled(b, ["old:r#0", "old:r#1"])
        assert [m["text"] for m in inbox] == ["old:r#0", "old:r#1"]
        assert inbox[0]["recalled"] and not inbox[1].get("recalled")


def test_a_recall_relayed_into_openim_is_not_relayed_back(tmp_path):
    """Both ways, RongCloud and OpenIM: the recall relayed into OpenIM comes
    back through its revoke webhook, which names only (conversationID, seq);
    the bridge knows it by the id OpenIM's recall answered and drops it as an
    echo, as it drops the relayed message's own after-save webhook."""
    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "rongcloud", "openim", users=4, both_ways=True) as b:
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url))
            b.new.feed_to(b.new.hook(b.server_url))
            sent_then_first_recalled(b, ["old:r#0"])

            def back() -> dict | None:
                s = httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()
                way = s["directions"][1]
                # Not on pending: a revoke webhook that beats the revoke's recorded
                # answer waits its settle window, then the relayer drops it as an echo.
                return s if way["echoes"] >= 2 or way["failed"] or way["relayed"] else None

            status = wait_for(back, 45, "OpenIM's webhooks for the relayed message and its recall")
        forward, backward = status["directions"]
        assert forward["relayed"] == 2 and forward["failed"] == 0, status  # the message and its recall
        assert backward["echoes"] == 2 and backward["relayed"] == backward["failed"] == 0, backward
        assert [m["text"] for m in b.old.inbox(b.old.users[1])] == ["old:r#0"]


def test_a_paused_bridge_stores_deliveries_and_relays_them_when_resumed_from_the_cli(tmp_path):
    """`imshift bridge pause|resume` run as their own commands while the
    embedded server relays: paused, deliveries are stored and none relayed;
    resumed, the server picks them up by itself within seconds."""
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "netease", "rongcloud", users=6) as b:
        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "imshift.cli", "bridge", *args], env=b.env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url))
            assert "B1 is paused" in cli("pause", "B1")
            plan = conversations(b, "old", pairs=3, groups=False, count=12)
            asyncio.run(send_all(b.old, plan, rate=50))

            def status():
                return httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()

            wait_for(lambda: status()["directions"][0]["pending"] == 12, 30, "12 stored while paused")
            time.sleep(1.5)  # nothing moves while paused
            assert status()["directions"][0]["relayed"] == 0
            assert "B1 is active" in cli("resume", "B1")
            want, last = expected(b, plan), {}
            wait_for(lambda: check_arrived(b.new, want, "old:", last), 45,
                     lambda: f"relayed after the resume: {last}")
            assert "bridge B1: old -> new" in cli("status", "B1")
            assert json.loads(cli("status", "B1", "--json"))["directions"][0]["relayed"] == 12


def test_a_failed_message_is_relayed_by_retry_once_a_delta_run_maps_its_sender(tmp_path):
    """The cut-over day as it goes: a user the run missed writes, the message
    is held and fails naming them; the delta run (--since R1) migrates them;
    `imshift bridge retry B1` relays it, through the delta run's id map."""
    import subprocess
    import sys

    from bridge_support import _finish, _register

    db = f"sqlite:///{tmp_path}/imshift.db"
    with bridged(tmp_path, db, "rongcloud", "maxim", users=4, hold=1.0) as b:
        late = asyncio.run(_register(b.old, ["bu_late"]))[0]
        with serving(b, tmp_path / "serve.log"):
            b.old.feed_to(b.old.hook(b.server_url))
            asyncio.run(send_all(b.old, [Sent("old", late, b.old.users[0], False, "old:late#0")], rate=10))

            def status():
                return httpx.get(f"{b.server_url}/api/bridges/1", timeout=10).json()["directions"][0]

            wait_for(lambda: status()["failed"] == 1, 45, "the message from the unmigrated user failed")
            # The delta run: the late user only, into the same target.
            from helpers import context
            from imshift.jobs import run_control, runs
            from imshift.workers.embedded import in_process_workers
            import dataclasses
            ctx = context(db, apps={side.app: {"vendor": side.vendor, **{
                f.name: getattr(side.box.config(side.url), f.name)
                for f in dataclasses.fields(side.box.config(side.url))
                if getattr(side.box.config(side.url), f.name) is not None}} for side in (b.old, b.new)})
            users = tmp_path / "late.csv"
            users.write_text(f"user_id,name\n{late},Late\n", encoding="utf-8")
            delta = runs.plan_run(ctx.engine, "old", ctx.target("new"),
                                  runs.RunRequest(users=users, since=b.run_id), chunk_size=10)
            ctx.runtime  # noqa: B018  (configures the workers)
            with in_process_workers(ctx.broker):
                run_control.start(ctx.engine, ctx.broker, delta.run_id)
                for _, p in run_control.run_progress(ctx.engine, delta.run_id).stages:
                    _finish(ctx, p.job_id)
            done = subprocess.run([sys.executable, "-m", "imshift.cli", "bridge", "retry", "B1"], env=b.env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "1 message to relay again" in done.stdout, done.stderr
            wait_for(lambda: status()["relayed"] == 1, 45, "the retried message relayed")
        with ctx.engine.connect() as conn:
            from imshift.workers.relay import map_ids, run_chain
            maxim_id = map_ids(conn, run_chain(conn, b.run_id), "user", {late}, True)[late]
        inbox = b.new.inbox(b.new.users[0])
        assert [(m["text"], str(m["from"])) for m in inbox] == [("old:late#0", maxim_id)]
