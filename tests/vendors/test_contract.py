"""What every vendor client and sandbox must do alike, checked for all four
through real HTTP (in-process ASGI, and over loopback)."""

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from imshift.vendors.vocabulary import Group, Message, Operation, Outcome, Profile, Unsupported
from imshift.vendors.client import VendorClient
from imshift.vendors.http import http_client
from imshift.vendors.registry import VENDORS
from imshift.vendors.sandbox.serve import served

ALL = list(VENDORS.values())
each_vendor = pytest.mark.parametrize("vendor", ALL, ids=[v.name for v in ALL])

# Each operation, the method that does it, and arguments that are valid for any vendor.
CALLS = {
    Operation.REGISTER: ("register_users", lambda: ([Profile("probe_1", "Probe")],)),
    Operation.UPDATE_PROFILE: ("update_profiles", lambda: ([Profile("probe_1", "Probe")],)),
    Operation.GET_PROFILES: ("get_profiles", lambda: (["probe_1"],)),
    Operation.ISSUE_TOKEN: ("issue_tokens", lambda: (["probe_1"],)),
    Operation.SEND: ("send", lambda: ("probe_1", ["probe_2"], Message(text="hi"))),
    Operation.SEND_GROUP: ("send_group", lambda: ("probe_1", ["g1"], Message(text="hi"))),
    Operation.BROADCAST: ("broadcast", lambda: ("probe_1", Message(text="hi"))),
    Operation.CREATE_GROUP: ("create_group", lambda: (Group("g1", "G", "probe_1", ["probe_2"]),)),
    Operation.ADD_MEMBERS: ("add_members", lambda: ("g1", "probe_1", ["probe_2"])),
    Operation.IMPORT_FRIENDS: ("import_friends", lambda: ("probe_1", ["probe_2"])),
    Operation.LIST_USERS: ("list_users", lambda: ()),
    Operation.LIST_GROUPS: ("list_group_pages", lambda: ()),
    Operation.GET_MEMBERS: ("get_members", lambda: ("g1", "probe_1")),
    Operation.GET_FRIENDS: ("get_friends", lambda: ("probe_1",)),
}
# Operations more than one method does: each must be implemented with the first.
ALSO = {Operation.LIST_USERS: ("list_user_pages", lambda: ())}

_ids = itertools.count()


def fresh_id() -> str:
    return f"user_{next(_ids):07d}"


def test_every_operation_is_either_implemented_or_refused_up_front():
    assert set(CALLS) == set(Operation)
    for vendor in ALL:
        for op, (method, _) in [*CALLS.items(), *ALSO.items()]:
            implemented = getattr(vendor.client, method) is not getattr(VendorClient, method)
            assert implemented == vendor.client.supports(op), (vendor.name, op, method)


@each_vendor
async def test_unsupported_operations_make_no_call(vendor):
    box = vendor.sandbox()
    client = box.client()
    for op, (method, args) in [*CALLS.items(), *ALSO.items()]:
        if client.supports(op):
            continue
        with pytest.raises(Unsupported):
            result = getattr(client, method)(*args())
            if asyncio.iscoroutine(result):
                await result
    assert box.calls.total() == 0


@each_vendor
async def test_a_bad_secret_is_auth_and_creates_nothing(vendor):
    box = vendor.sandbox()
    user_id = fresh_id()
    [result] = await box.client(wrong_secret=True).register_users([Profile(user_id, "Ann")])
    assert result.outcome is Outcome.AUTH, result
    assert result.code
    assert box.stored_profile(user_id) is None


@each_vendor
async def test_an_over_limit_burst_is_rate_limited_not_failed(vendor):
    box = vendor.sandbox(rate_limits={"register": 2})
    client = box.client()
    results = [(await client.register_users([Profile(fresh_id(), "Ann")]))[0] for _ in range(7)]
    limited = [r for r in results if r.outcome is Outcome.RATE_LIMITED]
    assert limited, results
    assert all(r.outcome in (Outcome.OK, Outcome.RATE_LIMITED) for r in results), results
    assert box.over_limit["register"] >= len(limited)


@each_vendor
async def test_registering_twice_succeeds_once_at_the_vendor(vendor):
    box = vendor.sandbox()
    client = box.client()
    user_id = fresh_id()
    [first] = await client.register_users([Profile(user_id, "Ann")])
    [again] = await client.register_users([Profile(user_id, "Ann")])
    assert first.outcome is Outcome.OK, first
    assert again.succeeded, again
    assert box.duplicates["register"] == 1
    assert box.stored_profile(first.data["user_id"]).name == "Ann"


@each_vendor
async def test_an_invalid_id_is_rejected_naming_the_field_and_spares_the_rest(vendor):
    box = vendor.sandbox()
    good = fresh_id()
    bad, ok = await box.client().register_users([Profile("bad id!" + "x" * 300, "Bad"),
                                                 Profile(good, "Good")])
    assert bad.outcome is Outcome.REJECTED
    assert "user_id" in bad.message
    assert ok.outcome is Outcome.OK
    assert box.stored_profile(ok.data["user_id"]).name == "Good"


def valid_names(vendor):
    """Arbitrary Unicode names within the vendor's own limits."""
    rules = vendor.client.rules
    return st.text(min_size=1, max_size=30).filter(
        lambda name: not rules.check_profile(Profile("user_0000001", name)))


@each_vendor
def test_unicode_names_read_back_unchanged(vendor):
    box = vendor.sandbox()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(names=st.lists(valid_names(vendor), min_size=1, max_size=8))
    def check(names):
        profiles = [Profile(fresh_id(), name) for name in names]

        async def round_trip():
            client = box.client()
            results = await client.register_users(profiles)
            assert [r.outcome for r in results] == [Outcome.OK] * len(profiles), results
            ids = [r.data["user_id"] for r in results]
            if client.supports(Operation.GET_PROFILES):
                return [p.name if p else None for p in await client.get_profiles(ids)]
            return [box.stored_profile(i).name for i in ids]

        assert asyncio.run(round_trip()) == names

    check()


@pytest.mark.loopback
@each_vendor
async def test_over_loopback_with_the_real_traffic_transport(vendor):
    box = vendor.sandbox()
    with served(box) as base_url:
        async with http_client() as http:
            client = vendor.client(box.config(base_url), http)
            profiles = [Profile(fresh_id(), f"Zoë {i}") for i in range(20)]
            results = await client.register_users(profiles)
            assert all(r.outcome is Outcome.OK for r in results), results
            ids = [r.data["user_id"] for r in results]
            sent = await client.send(ids[0], ids[1:], Message(text="héllo"))
    assert all(r.outcome is Outcome.OK for r in sent), sent
    assert all(len(box.inbox(i)) == 1 for i in ids[1:])
    assert box.inbox(ids[1])[0]["text"] == "héllo"
