"""The operation table, run for every vendor against its sandbox exactly as
the workers run it: stored payloads in, one Result per item out."""

import itertools

import pytest

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome
from imshift.vendors.client import VendorClient
from imshift.vendors.operations import (STEPS, WorkItem, dedup_key, encode_group, encode_member,
                                        encode_message, encode_pair, encode_profile, step)
from imshift.vendors.registry import VENDORS

ALL = list(VENDORS.values())
each_vendor = pytest.mark.parametrize("vendor", ALL, ids=[v.name for v in ALL])
_seq = itertools.count()


def items(*pairs):
    return [WorkItem(next(_seq), key, payload) for key, payload in pairs]


async def run(client, operation, work, params=None):
    results = await step(operation).run(client, work, params or {}, dedup_key("t", work))
    assert len(results) == len(work), (operation, results)
    return results


def test_every_step_names_a_method_of_the_interface_and_sends_are_not_idempotent():
    for op, s in STEPS.items():
        assert s.operation is op
        assert callable(getattr(VendorClient, s.method)), s.method
    assert not any(STEPS[op].idempotent for op in (Operation.SEND, Operation.SEND_GROUP,
                                                   Operation.BROADCAST))
    assert all(STEPS[op].idempotent for op in (Operation.REGISTER, Operation.ISSUE_TOKEN))


def test_a_vendor_supports_a_step_exactly_when_it_implements_its_method():
    for vendor in ALL:
        for op, s in STEPS.items():
            implemented = getattr(vendor.client, s.method) is not getattr(VendorClient, s.method)
            assert implemented == vendor.client.supports(op), (vendor.name, op)


@each_vendor
async def test_every_supported_step_runs_from_stored_payloads(vendor):
    box = vendor.sandbox()
    client = box.client()
    supports = client.supports
    tag = next(_seq)
    names = [f"owner_{tag}", f"peer_{tag}", f"third_{tag}"]
    registered = await run(client, Operation.REGISTER,
                           items(*[(n, encode_profile(f"Zoë {n}", "", {})) for n in names]))
    assert [r.outcome for r in registered] == [Outcome.OK] * 3, registered
    owner, peer, third = (r.data["user_id"] for r in registered)
    assert box.stored_profile(peer).name == f"Zoë {names[1]}"

    message = {"sender": owner, "message": encode_message(Message(text="héllo"))}
    [sent] = await run(client, Operation.SEND, items((peer, {})), message)
    assert sent.outcome is Outcome.OK, sent
    assert box.inbox(peer)[-1]["text"] == "héllo"

    if supports(Operation.ISSUE_TOKEN):
        [token] = await run(client, Operation.ISSUE_TOKEN, items((peer, {})))
        assert token.outcome is Outcome.OK and token.data.get("token"), token
    if supports(Operation.GET_PROFILES):
        found, missing = await run(client, Operation.GET_PROFILES,
                                   items((peer, {"name": f"Zoë {names[1]}"}), ("9" * 18, {})))
        assert found.outcome is Outcome.OK, found
        assert missing.outcome is Outcome.REJECTED, missing
    if supports(Operation.IMPORT_FRIENDS):
        friends = await run(client, Operation.IMPORT_FRIENDS,
                            items((f"{owner}~{peer}", encode_pair(owner, peer)),
                                  (f"{owner}~{third}", encode_pair(owner, third))))
        assert all(r.succeeded for r in friends), friends
        assert {peer, third} <= box.friends(owner)
    if supports(Operation.CREATE_GROUP):
        group = Group(f"grp{tag}", "Team", owner, [peer])
        [created] = await run(client, Operation.CREATE_GROUP, items((group.group_id, encode_group(group))))
        assert created.succeeded, created
        group_id = created.data["group_id"]
        assert {owner, peer} <= box.group_members(group_id)
        if supports(Operation.ADD_MEMBERS):
            [added] = await run(client, Operation.ADD_MEMBERS,
                                items((f"{group_id}:{third}", encode_member(group_id, owner, third))))
            assert added.succeeded, added
            assert third in box.group_members(group_id)
        if supports(Operation.SEND_GROUP):
            [to_group] = await run(client, Operation.SEND_GROUP, items((group_id, {})), message)
            assert to_group.outcome is Outcome.OK, to_group
    if supports(Operation.BROADCAST):
        [broadcast] = await run(client, Operation.BROADCAST, items(("all", {})), message)
        assert broadcast.outcome in (Outcome.OK, Outcome.RATE_LIMITED), broadcast
