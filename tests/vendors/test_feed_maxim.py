"""Maxim's message subscription for the bridge, over real HTTP on loopback:
the sandbox posts each message to a small receiver that runs read_feed on
each POST; relay() sends as the original sender with the mark in `ext` and
a transaction_id, so a repeated relay is delivered once; recall() takes it back."""

import asyncio
import json
import time
from dataclasses import replace

import pytest

from imshift.vendors.feeds import MARK, Delivery, FeedMessage, FeedRefused
from imshift.vendors.http import http_client
from imshift.vendors.maxim import MaximClient
from imshift.vendors.sandbox.maxim import MaximSandbox
from imshift.vendors.sandbox.serve import served

from feed_receiver import Receiver
from imshift.vendors.vocabulary import Group, Outcome, Profile

pytestmark = pytest.mark.loopback


class Rig:
    def __init__(self, box, base, receiver, http, hooks, ids):
        self.box, self.base, self.receiver, self.http, self.hooks = box, base, receiver, http, hooks
        self.client = MaximClient(box.config(base), http)
        self.ann, self.bob, self.cat, self.group = ids

    async def send(self, **params):
        reply = await self.http.post(self.base + "/_sandbox/client/send", json=params)
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def settled(self, count):
        for _ in range(300):
            stats = (await self.http.get(self.base + "/_sandbox/feed/stats")).json()
            if len(self.receiver.got) + len(self.receiver.refused) >= count and not stats["pending"]:
                return stats
            await asyncio.sleep(0.01)
        raise AssertionError(f"got {len(self.receiver.got)} of {count}; {stats}")

    async def inbox(self, user):
        return (await self.http.get(self.base + "/_sandbox/inbox", params={"user": user})).json()


@pytest.fixture
async def rig():
    box = MaximSandbox()
    setup = box.client()
    made = await setup.register_users([Profile(n, n.title()) for n in ("ann", "bob", "cat")])
    ann, bob, cat = (r.data["user_id"] for r in made)
    group = (await setup.create_group(Group("team", "Team", ann, (bob, cat)))).data["group_id"]
    await setup.http.aclose()
    receiver = Receiver(MaximClient, box.config(), ok_body={})
    with served(box) as base, served(receiver) as hooks:
        async with http_client() as http:
            assert (await http.post(base + "/_sandbox/feed", json={"url": hooks + "/hooks/app1"})).status_code == 200
            yield Rig(box, base, receiver, http, hooks, (ann, bob, cat, group))


async def test_client_sends_come_through_the_subscription(rig):
    sent = [await rig.send(**{"from": rig.ann, "to": rig.bob, "text": " hi ✓"}),
            await rig.send(**{"from": rig.bob, "to": rig.group, "group": True, "custom": {"k": [1]}}),
            await rig.send(**{"from": rig.cat, "to": rig.ann,
                              "image": {"url": "https://x.example/i.png", "width": 5, "height": 7}}),
            await rig.send(**{"from": rig.ann, "to": rig.group, "group": True,
                              "file": {"url": "https://x.example/f.zip", "name": "f.zip", "size": 10}})]
    await rig.settled(4)
    got = sorted(rig.receiver.got, key=lambda m: m.sent_at_ms)
    assert [m.msg_id for m in got] == [s["msg_id"] for s in sent]
    assert [m.sent_at_ms for m in got] == [s["sent_at_ms"] for s in sent]
    assert [m.kind for m in got] == ["text", "custom", "image", "file"]
    assert (got[0].sender, got[0].to, got[0].group, got[0].text) == (rig.ann, rig.bob, False, " hi ✓")
    assert got[1].group and got[1].to == rig.group and got[1].custom == {"k": [1]}
    assert got[2].custom == {"url": "https://x.example/i.png", "width": 5, "height": 7}
    assert got[3].custom == {"url": "https://x.example/f.zip", "name": "f.zip", "size": 10}
    assert not any(m.marked for m in got)
    assert rig.receiver.deliveries[0].headers["signature"] == rig.box.feed_signature


async def test_relay_lands_as_the_sender_and_comes_back_marked(rig):
    now = int(time.time() * 1000)
    messages = [FeedMessage("s1", rig.ann, rig.bob, False, now, "text", text="relayed"),
                FeedMessage("s2", rig.bob, rig.group, True, now, "custom", custom={"a": "ü"}),
                FeedMessage("s3", rig.cat, rig.group, True, now, "image",
                            custom={"url": "https://x.example/p.jpg", "name": "p.jpg"})]
    results = [await rig.client.relay(m, dedup_key=m.msg_id) for m in messages]
    assert all(r.outcome is Outcome.OK and r.data["msg_id"] for r in results), results
    [to_bob] = [m for m in await rig.inbox(rig.bob) if m["group"] is None]
    assert to_bob | {"sent_at_ms": 0} == {"msg_id": results[0].data["msg_id"], "from": rig.ann, "to": rig.bob,
                                          "group": None, "kind": "text", "text": "relayed", "sent_at_ms": 0,
                                          "recalled": False}
    in_group = [m for m in await rig.inbox(rig.ann) if m["group"] == rig.group]
    assert [(m["from"], m["kind"]) for m in in_group] == [(rig.bob, "custom"), (rig.cat, "image")]
    assert in_group[1]["custom"] == {"url": "https://x.example/p.jpg", "name": "p.jpg"}
    await rig.settled(3)
    assert sorted(m.msg_id for m in rig.receiver.got) == sorted(r.data["msg_id"] for r in results)
    assert all(m.marked for m in rig.receiver.got)
    assert json.loads(json.loads(rig.receiver.deliveries[0].body)["ext"]) == {MARK: True}


async def test_a_relay_repeated_with_the_same_key_is_delivered_once(rig):
    message = FeedMessage("s7", rig.ann, rig.bob, False, int(time.time() * 1000), "text", text="once")
    first = await rig.client.relay(message, dedup_key="bridge:s7")
    again = await rig.client.relay(message, dedup_key="bridge:s7")
    assert first.outcome is Outcome.OK and again.outcome is Outcome.OK
    assert [m["text"] for m in await rig.inbox(rig.bob)] == ["once"]
    other = await rig.client.relay(message, dedup_key="bridge:s8")
    assert other.outcome is Outcome.OK and len(await rig.inbox(rig.bob)) == 2


async def test_recall_takes_back_the_relayed_message(rig):
    message = FeedMessage("s9", rig.ann, rig.group, True, int(time.time() * 1000), "text", text="oops")
    sent = await rig.client.relay(message, dedup_key="k9")
    recalled = await rig.client.recall(message, sent.data["msg_id"])
    assert recalled.outcome is Outcome.OK, recalled
    assert [m["recalled"] for m in await rig.inbox(rig.cat)] == [True]
    not_hers = replace(message, sender=rig.bob)
    assert (await rig.client.recall(not_hers, sent.data["msg_id"])).outcome is Outcome.REJECTED


async def test_a_client_recall_comes_through_as_a_recall(rig):
    sent = await rig.send(**{"from": rig.bob, "to": rig.ann, "text": "x"})
    reply = await rig.http.post(rig.base + "/_sandbox/client/recall", json={"from": rig.bob, "msg_id": sent["msg_id"]})
    assert reply.status_code == 200
    await rig.settled(2)
    recall = rig.receiver.got[-1]
    assert (recall.kind, recall.sender, recall.to, recall.recalls) == ("recall", rig.bob, rig.ann, sent["msg_id"])


async def test_a_wrong_signature_is_refused(rig):
    rig.receiver.config = replace(rig.receiver.config, feed_signature="something-else")
    await rig.send(**{"from": rig.ann, "to": rig.bob, "text": "hi"})
    stats = await rig.settled(1)
    assert rig.receiver.got == [] and [s for s, _ in rig.receiver.refused] == [401] and stats["http 401"] == 1
    assert rig.box.feed_signature not in rig.receiver.refused[0][1]


CONFIG = MaximSandbox(app_id="app1").config()


def read(body, signature=None, config=CONFIG, now=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {} if signature is False else {"signature": signature or CONFIG.feed_signature}
    return MaximClient.read_feed(config, Delivery(headers=headers, query={}, body=raw), now or time.time())


def event(**changes):
    body = {"msgId": 123456789012345, "from": {"uid": 2199040544800}, "to": {"uid": "2199040544816"},
            "type": "CHAT", "ctype": "TEXT", "content": "hi", "ext": "", "appId": "app1",
            "timestamp": int(time.time() * 1000)}
    return {**body, **changes}


def test_refusals_say_why_without_the_signature():
    for signature, config in (("wrong", CONFIG), ("\xe9" + CONFIG.feed_signature, CONFIG), (False, CONFIG),
                              (None, replace(CONFIG, feed_signature=""))):
        with pytest.raises(FeedRefused) as refused:
            read(event(), signature, config)
        assert refused.value.status == 401 and CONFIG.feed_signature not in refused.value.reason
    for bad in (event(appId="other"), event(timestamp=int((time.time() - 3600) * 1000))):
        with pytest.raises(FeedRefused) as other:
            read(bad)
        assert other.value.status == 401
    for bad in (b"nope", b"[]", event(msgId=None), event(**{"from": {"uid": "ann"}}), event(to={}),
                event(ctype=None), event(timestamp="now"), event(ctype="IMAGE", attachment="{}"),
                event(msgId=2 ** 63)):
        with pytest.raises(FeedRefused) as malformed:
            read(bad)
        assert malformed.value.status == 400


def test_ids_are_int64_and_other_types_keep_their_name():
    [message] = read(event())
    assert (message.msg_id, message.sender, message.to) == ("123456789012345", "2199040544800", "2199040544816")
    [audio] = read(event(ctype="AUDIO", attachment=json.dumps({"url": "u"})))
    assert audio.kind == "AUDIO"
    assert read(event(type="SYSTEM")) == []
    [no_time] = read({k: v for k, v in event().items() if k != "timestamp"}, now=1000.0)
    assert no_time.sent_at_ms == 1_000_000
    [marked] = read(event(ext=json.dumps({MARK: True})))
    assert marked.marked


async def test_a_kind_maxim_cannot_carry_is_rejected_before_any_call():
    box = MaximSandbox()
    client = box.client()
    for message in (FeedMessage("s", "1", "2", False, 1, "AUDIO"),
                    FeedMessage("s", "1", "2", False, 1, "image", custom={}),
                    FeedMessage("s", "ann", "2", False, 1, "text", text="x")):
        result = await client.relay(message, dedup_key="k")
        assert result.outcome is Outcome.REJECTED and result.message
    assert sum(box.calls.values()) == 0
