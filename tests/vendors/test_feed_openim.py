"""OpenIM v3's feed for the bridge, over real HTTP on loopback: the sandbox
posts its after-save and after-revoke webhooks (and after-send ones when
enabled) to a small receiver that runs read_feed on each POST; relay()
sends as the original sender with the mark in `ex`, and recall() takes a
relayed message back."""

import asyncio
import json
import time
from dataclasses import replace

import pytest

from imshift.vendors.feeds import MARK, Delivery, FeedMessage, FeedRefused
from imshift.vendors.http import http_client
from imshift.vendors.openim import OpenIMClient
from imshift.vendors.openim_v2 import OpenIMV2Client
from imshift.vendors.sandbox.common import Faults
from imshift.vendors.sandbox.openim import OpenIMSandbox
from imshift.vendors.sandbox.openim_feed import WEBHOOKS
from imshift.vendors.sandbox.serve import served

from feed_receiver import Receiver
from imshift.vendors.vocabulary import Outcome

pytestmark = pytest.mark.loopback
OK_REPLY = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}


def people(box):
    for user in ("ann", "bob", "cat", "dan"):
        box._add_user({"userID": user, "nickname": user.title()})
    box.add_group("g1", "Team", "ann", ["bob", "cat"])


class Rig:
    def __init__(self, box, base, receiver, http, hooks):
        self.box, self.base, self.receiver, self.http, self.hooks = box, base, receiver, http, hooks
        self.client = OpenIMClient(box.config(base), http)

    async def send(self, **params):
        reply = await self.http.post(self.base + "/_sandbox/client/send", json=params)
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def settled(self, count):
        """Wait until the receiver has `count` messages and nothing is pending."""
        for _ in range(300):
            stats = (await self.http.get(self.base + "/_sandbox/feed/stats")).json()
            if len(self.receiver.got) + len(self.receiver.refused) >= count and not stats["pending"]:
                return stats
            await asyncio.sleep(0.01)
        raise AssertionError(f"got {len(self.receiver.got)} of {count}; {stats}")

    async def inbox(self, user):
        return (await self.http.get(self.base + "/_sandbox/inbox", params={"user": user})).json()


@pytest.fixture
async def rig(request):
    box = OpenIMSandbox(**getattr(request, "param", {}))
    people(box)
    receiver = Receiver(OpenIMClient, box.config(), ok_body=OK_REPLY)
    with served(box) as base, served(receiver) as hooks:
        async with http_client() as http:
            url = f"{hooks}/hooks/app1/{box.feed_secret}"  # the server adds /{callbackCommand}
            assert (await http.post(base + "/_sandbox/feed", json={"url": url})).status_code == 200
            yield Rig(box, base, receiver, http, hooks)


async def test_client_sends_come_through_the_feed_in_order(rig):
    sent = [await rig.send(**{"from": "ann", "to": "bob", "text": "héllo  "}),
            await rig.send(**{"from": "bob", "to": "g1", "group": True, "text": "hi team"}),
            await rig.send(**{"from": "ann", "to": "bob", "custom": {"card": 1, "n": [1, 2]}}),
            await rig.send(**{"from": "cat", "to": "g1", "group": True,
                              "image": {"url": "https://x.example/a.png", "width": 8, "height": 6, "size": 99}}),
            await rig.send(**{"from": "ann", "to": "bob",
                              "file": {"url": "https://x.example/r.pdf", "name": "r.pdf", "size": 1234}})]
    await rig.settled(5)
    got = sorted(rig.receiver.got, key=lambda m: m.sent_at_ms)
    # Each message by the (conversationID, seq) a revoke names it with.
    assert [m.msg_id for m in got] == ["si_ann_bob#1", "sg_g1#1", "si_ann_bob#2", "sg_g1#2", "si_ann_bob#3"]
    assert [m.sent_at_ms for m in got] == [s["sent_at_ms"] for s in sent]
    assert [m.kind for m in got] == ["text", "text", "custom", "image", "file"]
    assert got[0].text == "héllo  " and got[0].sender == "ann" and got[0].to == "bob" and not got[0].group
    assert got[1].group and got[1].to == "g1" and got[1].conversation == "g:g1"
    assert got[2].custom == {"card": 1, "n": [1, 2]}
    assert got[3].custom == {"url": "https://x.example/a.png", "width": 8, "height": 6, "size": 99, "type": "jpg"}
    assert got[4].custom == {"url": "https://x.example/r.pdf", "name": "r.pdf", "size": 1234}
    assert not any(m.marked for m in got)
    # As the server does: the key query names the pair, the body the command and the stored seq.
    first = json.loads(rig.receiver.deliveries[0].body)
    assert first["callbackCommand"] == "callbackAfterMsgSaveDBCommand" and first["msgFrom"] == 100
    assert first["seq"] == 1 and first["serverMsgID"] == sent[0]["msg_id"]
    assert (first["recvID"], first["groupID"]) == ("bob", "") and "key" in rig.receiver.deliveries[0].query


@pytest.mark.parametrize("rig", [{"webhooks": WEBHOOKS}], indirect=True)
async def test_with_the_after_send_webhooks_enabled_too_each_message_is_taken_once(rig):
    await rig.send(**{"from": "ann", "to": "bob", "text": "one"})
    await rig.send(**{"from": "bob", "to": "g1", "group": True, "text": "two"})
    await rig.settled(2)
    bodies = [json.loads(d.body) for d in rig.receiver.deliveries]
    assert sorted((b["callbackCommand"], b["seq"]) for b in bodies) == [
        ("callbackAfterMsgSaveDBCommand", 1), ("callbackAfterMsgSaveDBCommand", 1),
        ("callbackAfterSendGroupMsgCommand", 0), ("callbackAfterSendSingleMsgCommand", 0)]
    assert sorted(m.msg_id for m in rig.receiver.got) == ["sg_g1#1", "si_ann_bob#1"]


async def test_relay_lands_as_the_sender_and_comes_back_marked(rig):
    text = FeedMessage("src1", "ann", "bob", False, int(time.time() * 1000), "text", text="from the old app")
    custom = FeedMessage("src2", "bob", "g1", True, int(time.time() * 1000), "custom", custom={"a": "ü"})
    image = FeedMessage("src3", "cat", "ann", False, int(time.time() * 1000), "image",
                        custom={"url": "https://x.example/p.jpg", "width": 4, "height": 3})
    results = [await rig.client.relay(m, dedup_key=m.msg_id) for m in (text, custom, image)]
    assert all(r.outcome is Outcome.OK for r in results), results
    assert (await rig.inbox("bob"))[0] | {"sent_at_ms": 0} == {
        "msg_id": results[0].data["msg_id"], "from": "ann", "to": "bob", "group": None, "kind": "text",
        "text": "from the old app", "sent_at_ms": 0, "recalled": False}
    [in_group] = [m for m in await rig.inbox("cat") if m["group"] == "g1"]
    assert in_group["from"] == "bob" and in_group["custom"] == {"a": "ü"}
    assert (await rig.inbox("ann"))[-1]["custom"]["url"] == "https://x.example/p.jpg"
    await rig.settled(3)
    bodies = [json.loads(d.body) for d in rig.receiver.deliveries]
    assert sorted(b["serverMsgID"] for b in bodies) == sorted(r.data["msg_id"] for r in results)
    assert all(m.marked for m in rig.receiver.got)  # the bridge's own sends, never relayed again
    assert json.loads(bodies[0]["ex"]) == {MARK: True}


async def test_recall_takes_back_the_relayed_message(rig):
    message = FeedMessage("src9", "ann", "g1", True, int(time.time() * 1000), "text", text="oops")
    sent = await rig.client.relay(message, dedup_key="k")
    recalled = await rig.client.recall(message, sent.data["msg_id"])
    assert recalled.outcome is Outcome.OK, recalled
    assert [m["recalled"] for m in await rig.inbox("bob")] == [True]
    again = await rig.client.recall(message, sent.data["msg_id"])
    assert again.outcome is Outcome.EXISTS
    await rig.settled(2)
    [revoke] = [m for m in rig.receiver.got if m.kind == "recall"]
    assert revoke.recalls == f"sg_g1#{recalled.data['seq']}" and revoke.sender == "ann" and revoke.group
    assert revoke.msg_id == recalled.data["msg_id"]  # a bridge reading this feed knows it as its own


async def test_a_client_recall_comes_through_as_a_recall(rig):
    sent = await rig.send(**{"from": "bob", "to": "ann", "text": "x"})
    reply = await rig.http.post(rig.base + "/_sandbox/client/recall", json={"from": "bob", "msg_id": sent["msg_id"]})
    assert reply.status_code == 200
    await rig.settled(2)
    message, recall = rig.receiver.got
    assert (recall.kind, recall.sender, recall.to, recall.group) == ("recall", "bob", "ann", False)
    assert recall.recalls == message.msg_id == "si_ann_bob#1"  # exactly the message it takes back


async def test_a_wrong_secret_in_the_url_is_refused(rig):
    url = f"{rig.hooks}/hooks/app1/{rig.box.feed_secret}x"
    await rig.http.post(rig.base + "/_sandbox/feed", json={"url": url})
    await rig.send(**{"from": "ann", "to": "bob", "text": "hi"})
    stats = await rig.settled(1)
    assert rig.receiver.got == [] and [s for s, _ in rig.receiver.refused] == [401]
    assert stats["http 401"] == 1 and rig.box.feed_secret not in rig.receiver.refused[0][1]


def delivery(body, secret="s3cret"):
    return Delivery(headers={}, query={}, body=json.dumps(body).encode() if not isinstance(body, bytes) else body,
                    path_secret=secret)


def message_body(**changes):
    body = {"callbackCommand": "callbackAfterMsgSaveDBCommand", "sendID": "ann", "recvID": "bob",
            "groupID": "", "serverMsgID": "m1", "clientMsgID": "c1", "sessionType": 1, "msgFrom": 100,
            "contentType": 101, "sendTime": int(time.time() * 1000), "content": json.dumps({"content": "hi"}),
            "seq": 4, "ex": ""}
    return {**body, **changes}


CONFIG = OpenIMSandbox().config()


def read(body, secret="s3cret", feed_secret="s3cret", now=None):
    config = replace(CONFIG, feed_secret=feed_secret)
    return OpenIMClient.for_config(config).read_feed(config, delivery(body, secret), now or time.time())


def test_refusals_say_why_without_the_secret():
    for secret, feed_secret in (("wrong", "s3cret"), ("s3cr\xe9t", "s3cret"), ("", "s3cret"), ("", ""),
                                ("s3cret", "")):
        with pytest.raises(FeedRefused) as refused:
            read(message_body(), secret, feed_secret)
        assert refused.value.status == 401 and "s3cret" not in refused.value.reason
    with pytest.raises(FeedRefused) as stale:
        read(message_body(sendTime=int((time.time() - 3600) * 1000)))
    assert stale.value.status == 401
    for bad in (b"{not json", b"[1]", message_body(sendID=""), message_body(sendTime="soon"),
                message_body(content="not json"), message_body(seq=0), message_body(seq="4")):
        with pytest.raises(FeedRefused) as malformed:
            read(bad)
        assert malformed.value.status == 400


def test_what_is_not_a_users_message_is_ignored_and_other_types_keep_their_name():
    [text] = read(message_body())
    assert (text.msg_id, text.kind, text.text, text.sender, text.to) == ("si_ann_bob#4", "text", "hi", "ann", "bob")
    assert read(message_body(callbackCommand="callbackAfterUserOnlineCommand")) == []
    # After-send reports the message again before it is stored (seq 0): its after-save is the one taken.
    assert read(message_body(callbackCommand="callbackAfterSendSingleMsgCommand", seq=0)) == []
    assert read(message_body(sessionType=4)) == []  # notification session
    assert read(message_body(contentType=1501)) == []  # a group notification
    [voice] = read(message_body(contentType=103, content=json.dumps({"sourceUrl": "u"})))
    assert voice.kind == "voice" and voice.text is None
    [group] = read(message_body(sessionType=3, groupID="g_1", recvID=""))
    assert group.group and group.to == "g_1" and group.msg_id == "sg_g_1#4"
    [marked] = read(message_body(ex=json.dumps({MARK: True, "other": 1})))
    assert marked.marked


def test_a_revoke_names_the_peer_even_with_underscores_in_ids():
    body = {"callbackCommand": "callbackBeforeAfterMsgCommand", "conversationID": "si_a_b_c_1", "seq": 7,
            "userID": "c_1"}
    [recall] = read(body)
    assert (recall.kind, recall.sender, recall.to, recall.recalls) == ("recall", "c_1", "a_b", "si_a_b_c_1#7")


async def test_a_kind_openim_cannot_carry_is_rejected_before_any_call():
    box = OpenIMSandbox()
    people(box)
    client = box.client()
    for message in (FeedMessage("s", "ann", "bob", False, 1, "voice"),
                    FeedMessage("s", "ann", "bob", False, 1, "image", custom={"url": "https://x/p.png"}),
                    FeedMessage("s", "ann", "bob", False, 1, "file", custom={"url": "https://x/f"})):
        result = await client.relay(message, dedup_key="k")
        assert result.outcome is Outcome.REJECTED and result.message
    assert sum(box.calls.values()) == 0


async def test_a_cut_off_relay_may_have_been_delivered():
    box = OpenIMSandbox(faults=Faults(error_rate=1.0))
    people(box)
    result = await box.client().relay(FeedMessage("s", "ann", "bob", False, 1, "text", text="x"), dedup_key="k")
    assert result.outcome is Outcome.RETRYABLE and result.maybe_delivered


def test_openim_v2_has_no_feed():
    assert not OpenIMV2Client.feeds and OpenIMClient.for_config(CONFIG).feeds
