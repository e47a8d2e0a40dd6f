"""Reading a vendor back, as a migration's verify stage and a source listing
do: group members, friends, and the resumable user listing with profiles.
Every test talks to a sandbox served on 127.0.0.1 through the real-traffic
transport."""

import contextlib
import itertools

import pytest

from imshift.vendors.vocabulary import Group, Operation, Outcome, Profile
from imshift.vendors.client import CallFailed
from imshift.vendors.http import http_client
from imshift.vendors.registry import VENDORS
from imshift.vendors.sandbox.serve import served

pytestmark = pytest.mark.loopback

# (id, vendor, sandbox options): OpenIM twice, one per API version.
BOXES = [("rongcloud", "rongcloud", {}), ("netease", "netease", {}),
         ("openim_v3", "openim", {}), ("openim_v2", "openim", {"api_version": "v2"}),
         ("maxim", "maxim", {})]


def boxes_that(operation):
    chosen = [(VENDORS[name], options) for _, name, options in BOXES
              if VENDORS[name].client.supports(operation)]
    ids = [box_id for box_id, name, _ in BOXES if VENDORS[name].client.supports(operation)]
    return pytest.mark.parametrize("vendor, options", chosen, ids=ids)


_tags = itertools.count()


@contextlib.asynccontextmanager
async def live(vendor, options):
    """(sandbox, client) with the sandbox served over loopback."""
    box = vendor.sandbox(**options)
    with served(box) as base_url:
        async with http_client() as http:
            yield box, vendor.make_client(box.config(base_url), http)


async def register(client, count, *, avatar=False):
    """`count` new users; their ids at the vendor, in order."""
    tag = next(_tags)
    profiles = [Profile(f"u{tag}_{i:04d}", f"Zoë {tag} {i}", f"https://a.test/{tag}/{i}.png" if avatar else "")
                for i in range(count)]
    results = await client.register_users(profiles)
    assert all(r.succeeded for r in results), [r for r in results if not r.succeeded][:3]
    return [r.data["user_id"] for r in results]


def vendor_id(profile):
    """A listed user's id at the vendor: Maxim lists its users by username, the number kept beside."""
    return profile.extra.get("maxim_user_id", profile.user_id)


async def group_of(client, owner, members):
    created = await client.create_group(Group(f"g{next(_tags)}", "Readers", owner, members))
    assert created.succeeded, created
    return created.data["group_id"]


# -- group members ----------------------------------------------------------------------------

@boxes_that(Operation.GET_MEMBERS)
async def test_members_read_back_with_the_owner_and_none_for_an_unknown_group(vendor, options):
    async with live(vendor, options) as (box, client):
        owner, *members = await register(client, 4)
        group_id = await group_of(client, owner, members)
        assert sorted(await client.get_members(group_id, owner)) == sorted([owner, *members])
        assert box.calls["get_members"] == 1
        unknown = "7" * 12 if vendor.name in ("netease", "maxim") else "no_such_group"
        assert await client.get_members(unknown, owner) is None


@boxes_that(Operation.GET_MEMBERS)
async def test_members_added_later_are_read_back(vendor, options):
    async with live(vendor, options) as (box, client):
        owner, first, *later = await register(client, 5)
        group_id = await group_of(client, owner, [first])
        assert all(r.succeeded for r in await client.add_members(group_id, owner, later))
        assert set(await client.get_members(group_id, owner)) == {owner, first, *later}


@pytest.mark.parametrize("box_id", ["openim_v3", "maxim"])
async def test_a_group_over_one_page_is_read_whole(box_id):
    _, name, options = next(b for b in BOXES if b[0] == box_id)
    async with live(VENDORS[name], options) as (box, client):
        owner, *members = await register(client, 1_050)
        group_id = await group_of(client, owner, members)
        found = await client.get_members(group_id, owner)
        assert len(found) == 1_050 and set(found) == {owner, *members}
        assert box.calls["get_members"] == 2  # 1000 a page


async def test_netease_refuses_a_team_over_its_default_size_as_the_rules_say():
    vendor = VENDORS["netease"]
    assert vendor.client.rules.group_size == 200
    async with live(vendor, {}) as (box, client):
        owner, *members = await register(client, 201)
        group_id = await group_of(client, owner, members[:199])
        assert len(await client.get_members(group_id, owner)) == 200
        [over] = await client.add_members(group_id, owner, members[199:])
        assert (over.outcome, over.code) == (Outcome.REJECTED, "801"), over
        assert len(box.group_members(group_id)) == 200


def test_each_vendor_states_its_group_size():
    sizes = {name: VENDORS[name].rules(VENDORS[name].sandbox(**options).config())
             .group_size for _, name, options in BOXES}
    assert sizes == {"rongcloud": 3000, "netease": 200, "openim": None, "maxim": None}


# -- friends ----------------------------------------------------------------------------------

@boxes_that(Operation.GET_FRIENDS)
async def test_friends_read_back_both_ways_and_none_is_empty(vendor, options):
    async with live(vendor, options) as (box, client):
        owner, peer, third, loner = await register(client, 4)
        assert all(r.succeeded for r in await client.import_friends(owner, [peer, third]))
        assert sorted(await client.get_friends(owner)) == sorted([peer, third])
        assert await client.get_friends(peer) == [owner]  # friendship is mutual at every vendor
        assert await client.get_friends(loner) == []
        assert box.calls["get_friends"] >= 3


@pytest.mark.parametrize("box_id, friends, calls", [("openim_v3", 1_050, 2), ("maxim", 1_050, 2),
                                                      ("rongcloud", 120, 3)])
async def test_a_roster_over_one_page_is_read_whole(box_id, friends, calls):
    _, name, options = next(b for b in BOXES if b[0] == box_id)
    async with live(VENDORS[name], options) as (box, client):
        owner, *others = await register(client, friends + 1)
        assert all(r.succeeded for r in await client.import_friends(owner, others))
        found = await client.get_friends(owner)
        assert len(found) == friends and set(found) == set(others)
        assert box.calls["get_friends"] == calls


async def test_rongcloud_friends_need_profile_hosting():
    async with live(VENDORS["rongcloud"], {"profile_hosting": False}) as (box, client):
        [user] = await register(client, 1)
        with pytest.raises(CallFailed) as failed:
            await client.get_friends(user)
        assert (failed.value.result.outcome, failed.value.result.code) == (Outcome.REJECTED, "1009")


@boxes_that(Operation.GET_FRIENDS)
async def test_a_failed_friend_read_raises_with_the_vendors_outcome(vendor, options):
    async with live(vendor, options) as (box, client):
        [user] = await register(client, 1)
        box.faults.error_rate = 1.0
        with pytest.raises(CallFailed) as failed:
            await client.get_friends(user)
        assert failed.value.result.outcome is Outcome.RETRYABLE


# -- listing users with profiles, resumably ---------------------------------------------------

@boxes_that(Operation.LIST_USERS)
async def test_a_listing_stopped_after_a_page_resumes_from_its_cursor(vendor, options):
    async with live(vendor, options) as (box, client):
        ids = await register(client, 450, avatar=True)
        wanted = {p.user_id: p for p in await client.get_profiles(ids)}
        first_pages = client.list_user_pages(page_size=200)
        first, cursor = await anext(first_pages)
        await first_pages.aclose()  # the run stops here
        # a page is 200 of the vendor's listing (OpenIM lists its admin too, left out here)
        assert 199 <= len(first) <= 200 and cursor is not None
        rest = []
        async for page, after in client.list_user_pages(cursor, page_size=200):
            rest += page
            cursor = after
        assert cursor is None
        listed = [vendor_id(p) for p in first + rest]
        assert sorted(listed) == sorted(ids)  # everyone exactly once
        for profile in first + rest:
            assert (profile.name, profile.avatar) == (wanted[vendor_id(profile)].name,
                                                      wanted[vendor_id(profile)].avatar)
            assert profile.name.startswith("Zoë ") and profile.avatar.startswith("https://a.test/")


@boxes_that(Operation.LIST_USERS)
async def test_a_cursor_resumes_at_the_same_user_whatever_the_page_size(vendor, options):
    async with live(vendor, options) as (box, client):
        ids = await register(client, 130)
        pages = client.list_user_pages(page_size=50)
        first, cursor = await anext(pages)
        await pages.aclose()
        rest = [p async for page, _ in client.list_user_pages(cursor, page_size=30) for p in page]
        assert sorted(map(vendor_id, first + rest)) == sorted(ids)
        assert [u async for u in client.list_users(page_size=40)] == [p.user_id for p in first + rest]


async def test_openim_v3_reads_each_pages_profiles_in_one_call():
    async with live(VENDORS["openim"], {}) as (box, client):
        await register(client, 450)
        before = box.calls["get_profiles"]
        pages = [page async for page, _ in client.list_user_pages(page_size=200)]
        assert [len(p) for p in pages] == [199, 200, 51]  # the admin account, listed first, is left out
        assert box.calls["list_users"] == 3 and box.calls["get_profiles"] - before == 3


@boxes_that(Operation.LIST_USERS)
async def test_a_cursor_no_listing_gave_is_refused_before_any_call(vendor, options):
    async with live(vendor, options) as (box, client):
        with pytest.raises(ValueError):
            await anext(client.list_user_pages("page-two"))
        assert box.calls["list_users"] == 0
