"""NetEase's message copy as the bridge's feed, over real HTTP on loopback:
the sandbox copies what its simulated clients send to a receiver that runs
NeteaseClient.read_feed, as the vendor signs it; relay() and recall() go
through the sandbox's msg/sendMsg.action and msg/recall.action."""

import asyncio
import hashlib
import json
import time
from dataclasses import replace

import httpx
import pytest

from imshift.vendors.feeds import MARK, Delivery, FeedMessage, FeedRefused
from imshift.vendors.netease import NeteaseClient
from imshift.vendors.netease_feed import copy_checksum
from imshift.vendors.sandbox.netease import NeteaseSandbox
from imshift.vendors.sandbox.serve import served

from feed_receiver import Receiver
from imshift.vendors.vocabulary import Group, Outcome, Profile


@pytest.fixture
def world():
    box = NeteaseSandbox()
    with served(box) as base:
        receiver = Receiver(NeteaseClient, box.config(base))
        with served(receiver) as hook_base:
            yield box, base, receiver, hook_base + "/hook"


async def setup(box, base, hook, **feed):
    http = httpx.AsyncClient(timeout=10)
    client = NeteaseClient(box.config(base), http)
    results = await client.register_users([Profile(u, u) for u in ("ann", "bob", "cat")])
    assert all(r.succeeded for r in results)
    team = await client.create_group(Group("t1", "T", "ann", ["bob", "cat"]))
    assert team.outcome is Outcome.OK
    reply = await http.post(f"{base}/_sandbox/feed", json={"url": hook, **feed})
    assert reply.status_code == 200
    return http, client, team.data["group_id"]


async def test_client_sends_reach_the_feed_in_order_with_their_kinds(world):
    box, base, receiver, hook = world
    http, client, tid = await setup(box, base, hook)
    sends = [{"from": "ann", "to": "bob", "text": "hé  llo "},
             {"from": "ann", "to": "bob", "custom": {"card": {"id": 7}}},
             {"from": "bob", "to": "ann", "image": {"url": "http://img.test/a.jpg", "size": 12}},
             {"from": "ann", "to": "bob", "file": {"url": "http://f.test/r.pdf", "name": "r.pdf"}},
             {"from": "cat", "to": tid, "group": True, "text": "to team"}]
    sent = []
    for one in sends:
        reply = await http.post(f"{base}/_sandbox/client/send", json=one)
        assert reply.status_code == 200, reply.text
        sent.append(reply.json())
    # Deliveries run concurrently, so arrival order is not send order: the
    # vendor's timestamps are what order a conversation.
    got = sorted(await receiver.wait(len(sends)), key=lambda m: (m.sent_at_ms, m.msg_id))
    assert [m.msg_id for m in got] == [s["msg_id"] for s in sent]
    assert [m.sent_at_ms for m in got] == [s["sent_at_ms"] for s in sent]
    assert [m.kind for m in got] == ["text", "custom", "image", "file", "text"]
    assert got[0].text == "hé  llo " and got[0].sender == "ann" and got[0].to == "bob"
    assert got[1].custom == {"card": {"id": 7}}
    assert got[2].custom == {"url": "http://img.test/a.jpg", "name": "a.jpg", "size": 12}
    assert got[3].custom == {"url": "http://f.test/r.pdf", "name": "r.pdf"}
    assert got[4].group and got[4].to == tid and got[4].sender == "cat"
    assert not any(m.marked for m in got) and receiver.refused == []


async def test_a_recall_comes_through_the_feed(world):
    box, base, receiver, hook = world
    http, _, tid = await setup(box, base, hook)
    sent = (await http.post(f"{base}/_sandbox/client/send",
                            json={"from": "ann", "to": tid, "group": True, "text": "oops"})).json()
    reply = await http.post(f"{base}/_sandbox/client/recall", json={"from": "ann", "msg_id": sent["msg_id"]})
    assert reply.status_code == 200
    got = sorted(await receiver.wait(2), key=lambda m: m.sent_at_ms)
    assert got[1].kind == "recall" and got[1].recalls == sent["msg_id"] and got[1].group
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "bob"})).json()
    assert inbox[0]["recalled"] is True and inbox[0]["group"] == tid


async def test_relay_reaches_the_inbox_as_the_sender_and_does_not_come_back(world):
    box, base, receiver, hook = world
    http, client, tid = await setup(box, base, hook)
    relayed = []
    for message in (
            FeedMessage("src-1", "Bob", "cat", False, 1, "text", text=" hi "),
            FeedMessage("src-2", "bob", "cat", False, 2, "custom", custom={"x": [1, 2]}),
            FeedMessage("src-3", "bob", "cat", False, 3, "image", custom={"url": "http://i.test/p.png"}),
            FeedMessage("src-4", "bob", tid, True, 4, "text", text="team hi")):
        result = await client.relay(message, dedup_key=message.msg_id)
        assert result.outcome is Outcome.OK, result
        assert result.data["msg_id"] and result.data["sent_at_ms"] > 0
        relayed.append((message, result))
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "cat"})).json()
    assert [(m["from"], m["kind"]) for m in inbox] == [("bob", "text"), ("bob", "custom"),
                                                      ("bob", "image"), ("bob", "text")]
    assert inbox[0]["text"] == " hi " and inbox[1]["custom"] == {"x": [1, 2]}
    assert inbox[2]["custom"]["url"] == "http://i.test/p.png" and inbox[3]["group"] == tid
    assert [m["msg_id"] for m in inbox] == [r.data["msg_id"] for _, r in relayed]
    await asyncio.sleep(0.3)
    assert receiver.got == []  # route=false: never copied back
    assert box.sent[relayed[0][1].data["msg_id"]]["ext"] == MARK

    # recall takes the relayed message back (the engine passes the relay's send time)
    message, result = relayed[3]
    back = await client.recall(replace(message, sent_at_ms=result.data["sent_at_ms"]),
                               result.data["msg_id"])
    assert back.outcome is Outcome.OK, back
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "ann"})).json()
    assert inbox[-1]["recalled"] is True
    unknown = await client.recall(message, "123")
    assert unknown.outcome is Outcome.REJECTED


async def test_what_netease_cannot_carry_is_rejected_before_any_call(world):
    box, base, receiver, hook = world
    http, client, _ = await setup(box, base, hook)
    before = dict(box.calls)
    result = await client.relay(FeedMessage("s", "bob", "cat", False, 1, "RC:HQVCMsg"), dedup_key="k")
    assert result.outcome is Outcome.REJECTED and box.calls == before


async def test_an_api_send_without_route_false_is_copied(world):
    box, base, receiver, hook = world
    http, client, _ = await setup(box, base, hook)
    from imshift.vendors.vocabulary import Message
    sent = await client.send("ann", ["bob"], Message(text="mass"))
    assert sent[0].succeeded
    got = await receiver.wait(1)
    assert got[0].text == "mass" and got[0].sender == "ann" and not got[0].marked


async def test_retries_and_repeats_deliver_the_same_msg_id_again():
    box = NeteaseSandbox()
    with served(box) as base:
        receiver = Receiver(NeteaseClient, box.config(base), fail_first=1)
        with served(receiver) as hook_base:
            http, _, _ = await setup(box, base, hook_base + "/hook", retries=2, retry_delay=0.05,
                                     repeat=1.0)
            sent = (await http.post(f"{base}/_sandbox/client/send",
                                    json={"from": "ann", "to": "bob", "text": "x"})).json()
            got = await receiver.wait(2)
            assert [m.msg_id for m in got] == [sent["msg_id"]] * 2
            stats = (await http.get(f"{base}/_sandbox/feed/stats")).json()
            assert stats["retried"] == 1 and stats["repeated"] == 1


def signed(body: bytes, secret="demo-secret", curtime=None, key="demo-app-key"):
    curtime = curtime or str(int(time.time() * 1000))
    md5 = hashlib.md5(body).hexdigest()
    headers = {"curtime": curtime, "md5": md5, "checksum": copy_checksum(secret, md5, curtime)}
    if key is not None:
        headers["appkey"] = key
    return Delivery(headers, {}, body)


def read(delivery):
    return NeteaseClient.read_feed(NeteaseSandbox().config(), delivery, time.time())


def text_event(**changes):
    event = {"eventType": "1", "convType": "PERSON", "to": "bob", "fromAccount": "ann",
             "msgTimestamp": "1700000000000", "msgType": "TEXT", "body": "hi",
             "msgidServer": "42", "msgidClient": "c"}
    event.update(changes)
    return json.dumps(event).encode()


def test_the_signature_the_age_and_the_app_key_are_checked():
    body = text_event()
    assert read(signed(body))[0].msg_id == "42"
    assert read(signed(body, curtime=str(int(time.time()))))[0].text == "hi"  # seconds, too
    assert read(signed(body, key=None))[0].text == "hi"  # the documented examples send no AppKey
    cases = [signed(body, secret="forged"), signed(body, curtime=str(int(time.time() * 1000) - 400_000)),
             signed(body, key="other-app"), replace(signed(body), body=body + b" "),
             Delivery({}, {}, body),
             # header bytes over 0x7f read as latin-1 text: refused, not a TypeError
             replace(signed(body), headers={**signed(body).headers, "checksum": "\xe9" * 40}),
             replace(signed(body), headers={**signed(body).headers, "md5": "\xe9" * 32})]
    for delivery in cases:
        with pytest.raises(FeedRefused) as refused:
            read(delivery)
        assert refused.value.status == 401 and "demo-secret" not in refused.value.reason


def test_malformed_or_incomplete_bodies_are_400_and_other_events_are_ignored():
    for body in (b"not json", b"[1]", text_event(msgidServer=""), text_event(msgTimestamp="soon")):
        with pytest.raises(FeedRefused) as refused:
            read(signed(body))
        assert refused.value.status == 400
    assert read(signed(json.dumps({"eventType": "2", "accid": "ann"}).encode())) == []
    assert read(signed(text_event(msgType="NOTIFICATION"))) == []
    audio = read(signed(text_event(msgType="AUDIO", attach='{"url":"http://a.test/x.aac"}')))
    assert audio[0].kind == "AUDIO"  # kept with its own name: the bridge fails it with a reason
    marked = read(signed(text_event(ext=MARK)))
    assert marked[0].marked
    recall = read(signed(json.dumps({"eventType": "7", "from": "ann", "to": "bob", "msgId": "42",
                                     "deleteTime": "1700000000500"}).encode()))
    assert recall[0].kind == "recall" and recall[0].recalls == "42" and not recall[0].group
