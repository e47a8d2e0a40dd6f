"""Context resolves each configured app once (imshift/context.py App): the
target, the client, the throttle and the sandbox all read that one object,
and an edit of the config file gives a new one (Context.refresh)."""

import pytest

from imshift.context import Context


def test_an_app_is_resolved_once_and_again_after_its_file_changes(env, monkeypatch) -> None:
    toml = env / "imshift.toml"
    toml.write_text('[apps.shop]\nvendor = "netease"\nsandbox = true\nrates = { send = 7 }\n')
    monkeypatch.setenv("IMSHIFT_CONFIG", str(toml))
    ctx = Context()
    shop = ctx.app("shop")
    assert ctx.app("shop") is shop
    assert ctx.target("shop").rates["send"] == 7 == ctx.sandbox("shop").rate_limits["send"]
    assert ctx.target("shop").who == "NetEase Yunxin (app shop)" == shop.who
    assert ctx.app("shop") is shop  # no change to the file: the same app

    toml.write_text('[apps.shop]\nvendor = "netease"\nsandbox = true\nrates = { send = 12 }\n')
    assert ctx.target("shop").rates["send"] == 12
    assert ctx.app("shop") is not shop and ctx.app("shop").rates["send"] == 12
    # The sandbox stands for the vendor: it keeps the limits it started with.
    assert ctx.sandbox("shop").rate_limits["send"] == 7


def test_an_app_the_file_no_longer_has_is_refused_after_a_refresh(env, monkeypatch) -> None:
    toml = env / "imshift.toml"
    toml.write_text('[apps.shop]\nvendor = "netease"\nsandbox = true\n')
    monkeypatch.setenv("IMSHIFT_CONFIG", str(toml))
    ctx = Context()
    assert ctx.target("shop").app == "shop"
    toml.write_text("# no apps\n")
    with pytest.raises(ValueError, match="no vendor app named 'shop'"):
        ctx.target("shop")
