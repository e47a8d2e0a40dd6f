"""RongCloud's full message routing as the bridge's feed, over real HTTP on
loopback: the sandbox routes what its simulated clients send to a receiver
that runs RongCloudClient.read_feed, signed in the URL query as the vendor
signs it; relay() and recall() go through the sandbox's publish and
/message/recall.json."""

import asyncio
import json
import time
from dataclasses import replace
from urllib.parse import urlencode

import httpx
import pytest

from imshift.vendors.feeds import MARK, Delivery, FeedMessage, FeedRefused
from imshift.vendors.rongcloud import RongCloudClient
from imshift.vendors.rongcloud_feed import routing_signature
from imshift.vendors.sandbox.rongcloud import RongCloudSandbox
from imshift.vendors.sandbox.serve import served

from feed_receiver import Receiver
from imshift.vendors.vocabulary import Group, Outcome, Profile


@pytest.fixture
def world():
    box = RongCloudSandbox()
    with served(box) as base:
        receiver = Receiver(RongCloudClient, box.config(base))
        with served(receiver) as hook_base:
            yield box, base, receiver, hook_base + "/hook"


async def setup(box, base, hook, **feed):
    http = httpx.AsyncClient(timeout=10)
    client = RongCloudClient(box.config(base), http)
    results = await client.register_users([Profile(u, u) for u in ("ann", "bob", "cat")])
    assert all(r.succeeded for r in results)
    assert (await client.create_group(Group("g1", "G", "ann", ["bob", "cat"]))).succeeded
    reply = await http.post(f"{base}/_sandbox/feed", json={"url": hook, **feed})
    assert reply.status_code == 200
    return http, client


def in_order(messages):
    # Deliveries run concurrently: the vendor's timestamps order a conversation.
    return sorted(messages, key=lambda m: (m.sent_at_ms, m.msg_id))


async def test_client_sends_are_routed_with_their_kinds_and_times(world):
    box, base, receiver, hook = world
    http, _ = await setup(box, base, hook)
    sends = [{"from": "ann", "to": "bob", "text": "hé  llo "},
             {"from": "ann", "to": "bob", "custom": {"card": {"id": 7}}, "object_name": "App:Card"},
             {"from": "bob", "to": "ann", "image": "http://img.test/a.jpg"},
             {"from": "ann", "to": "bob", "file": {"url": "http://f.test/r.pdf", "size": 9}},
             {"from": "cat", "to": "g1", "group": True, "text": "to group"}]
    sent = []
    for one in sends:
        reply = await http.post(f"{base}/_sandbox/client/send", json=one)
        assert reply.status_code == 200, reply.text
        sent.append(reply.json())
    got = in_order(await receiver.wait(len(sends)))
    assert [m.msg_id for m in got] == [s["msg_id"] for s in sent]
    assert [m.sent_at_ms for m in got] == [s["sent_at_ms"] for s in sent]
    assert [m.kind for m in got] == ["text", "custom", "image", "file", "text"]
    assert got[0].text == "hé  llo " and (got[0].sender, got[0].to) == ("ann", "bob")
    assert got[1].custom == {"card": {"id": 7}}
    assert got[2].custom == {"url": "http://img.test/a.jpg"}
    assert got[3].custom == {"url": "http://f.test/r.pdf", "name": "r.pdf", "size": 9}
    assert got[4].group and got[4].to == "g1"
    assert not any(m.marked for m in got) and receiver.refused == []


async def test_a_client_recall_is_routed(world):
    box, base, receiver, hook = world
    http, _ = await setup(box, base, hook)
    sent = (await http.post(f"{base}/_sandbox/client/send",
                            json={"from": "ann", "to": "bob", "text": "oops"})).json()
    assert (await http.post(f"{base}/_sandbox/client/recall",
                            json={"from": "ann", "msg_id": sent["msg_id"]})).status_code == 200
    got = in_order(await receiver.wait(2))
    assert got[1].kind == "recall" and got[1].recalls == sent["msg_id"] and got[1].msg_id != sent["msg_id"]
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "bob"})).json()
    assert inbox[0]["recalled"] is True


async def test_relay_reaches_the_inbox_as_the_sender_and_is_not_routed_back(world):
    box, base, receiver, hook = world
    http, client = await setup(box, base, hook)
    relayed = []
    for message in (FeedMessage("s1", "bob", "cat", False, 1, "text", text=" hi "),
                    FeedMessage("s2", "bob", "cat", False, 2, "custom", custom={"x": [1, 2]}),
                    FeedMessage("s3", "bob", "cat", False, 3, "image", custom={"url": "http://i.test/p.png"}),
                    FeedMessage("s4", "bob", "g1", True, 4, "text", text="group hi")):
        result = await client.relay(message, dedup_key=message.msg_id)
        assert result.outcome is Outcome.OK and result.data["msg_id"], result
        relayed.append((message, result))
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "cat"})).json()
    assert [(m["from"], m["kind"]) for m in inbox] == [("bob", "text"), ("bob", "custom"),
                                                      ("bob", "image"), ("bob", "text")]
    assert inbox[0]["text"] == " hi " and inbox[1]["custom"] == {"x": [1, 2]}
    assert inbox[2]["custom"] == {"url": "http://i.test/p.png"} and inbox[3]["group"] == "g1"
    assert [m["msg_id"] for m in inbox] == [r.data["msg_id"] for _, r in relayed]
    await asyncio.sleep(0.3)
    assert receiver.got == []  # Server API sends are not routed by default

    message, result = relayed[0]
    back = await client.recall(replace(message, sent_at_ms=result.data["sent_at_ms"]),
                               result.data["msg_id"])
    assert back.outcome is Outcome.OK, back
    inbox = (await http.get(f"{base}/_sandbox/inbox", params={"user": "cat"})).json()
    assert inbox[0]["recalled"] is True and not inbox[1].get("recalled")
    assert (await client.recall(message, "NOPE-NOPE-NOPE-NOPE")).outcome is Outcome.REJECTED


async def test_where_the_app_routes_api_sends_the_relay_comes_back_marked():
    box = RongCloudSandbox(route_api_sends=True)
    with served(box) as base:
        receiver = Receiver(RongCloudClient, box.config(base))
        with served(receiver) as hook_base:
            http, client = await setup(box, base, hook_base + "/hook")
            result = await client.relay(FeedMessage("s1", "bob", "cat", False, 1, "text", text="hi"),
                                        dedup_key="s1")
            got = await receiver.wait(1)
            assert got[0].msg_id == result.data["msg_id"] and got[0].marked


async def test_what_rongcloud_cannot_carry_is_rejected_before_any_call(world):
    box, base, receiver, hook = world
    http, client = await setup(box, base, hook)
    before = dict(box.calls)
    result = await client.relay(FeedMessage("s", "bob", "cat", False, 1, "AUDIO"), dedup_key="k")
    assert result.outcome is Outcome.REJECTED and box.calls == before


async def test_retries_and_repeats_deliver_the_same_msg_id_again():
    box = RongCloudSandbox()
    with served(box) as base:
        receiver = Receiver(RongCloudClient, box.config(base), fail_first=1)
        with served(receiver) as hook_base:
            http, _ = await setup(box, base, hook_base + "/hook", retries=2, retry_delay=0.05, repeat=1.0)
            sent = (await http.post(f"{base}/_sandbox/client/send",
                                    json={"from": "ann", "to": "bob", "text": "x"})).json()
            got = await receiver.wait(2)
            assert [m.msg_id for m in got] == [sent["msg_id"]] * 2
            stats = (await http.get(f"{base}/_sandbox/feed/stats")).json()
            assert stats["retried"] == 1 and stats["repeated"] == 1


def signed(body: bytes, secret="demo-secret", stamp=None, nonce="12345"):
    stamp = stamp or str(int(time.time() * 1000))
    query = {"nonce": nonce, "signTimestamp": stamp,
             "signature": routing_signature(secret, nonce, stamp)}
    return Delivery({"content-type": "application/x-www-form-urlencoded"}, query, body)


def read(delivery):
    return RongCloudClient.read_feed(RongCloudSandbox().config(), delivery, time.time())


def routed(**changes):
    fields = {"fromUserId": "ann", "toUserId": "bob", "objectName": "RC:TxtMsg",
              "content": json.dumps({"content": "hi"}), "channelType": "PERSON",
              "msgTimestamp": "1700000000000", "msgUID": "BKOD-1234-ABCD-5678"}
    fields.update(changes)
    return urlencode(fields).encode()


def test_the_signature_the_age_and_the_app_key_are_checked():
    assert read(signed(routed()))[0].text == "hi"
    stale = str(int(time.time() * 1000) - 400_000)
    forged_key = replace(signed(routed()), query={**signed(routed()).query, "appKey": "other"})
    not_ascii = replace(signed(routed()), query={**signed(routed()).query, "signature": "\xe9" * 40})
    for delivery in (signed(routed(), secret="forged"), signed(routed(), stamp=stale), forged_key,
                     Delivery({}, {}, routed()), not_ascii):
        with pytest.raises(FeedRefused) as refused:
            read(delivery)
        assert refused.value.status == 401 and "demo-secret" not in refused.value.reason


def test_malformed_bodies_are_400_and_other_channels_are_ignored():
    for body in (b"\xff\xfe", routed(msgUID=""), routed(content="{not json"), routed(msgTimestamp="x")):
        with pytest.raises(FeedRefused) as refused:
            read(signed(body))
        assert refused.value.status == 400
    assert read(signed(routed(channelType="CHATROOM"))) == []
    voice = read(signed(routed(objectName="RC:HQVCMsg", content=json.dumps({"remoteUrl": "u"}))))
    assert voice[0].kind == "RC:HQVCMsg"  # kept by name: the bridge fails it with a reason
    marked = read(signed(routed(content=json.dumps({"content": "hi", "extra": MARK}))))
    assert marked[0].marked
    recall = read(signed(routed(objectName="RC:RcCmd", content=json.dumps({"messageUId": "X-1"}))))
    assert recall[0].kind == "recall" and recall[0].recalls == "X-1"
