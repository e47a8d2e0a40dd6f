"""`imshift check` and the check dry runs make: one read-only call per app,
against each vendor's sandbox over HTTP, with the right and a wrong secret."""

import dataclasses
import json
import re
import time

import pytest
from typer.testing import CliRunner

from imshift.cli import app
from imshift.vendors.registry import VENDORS
from imshift.vendors.sandbox.serve import served

runner = CliRunner()
pytestmark = pytest.mark.loopback


def configure(monkeypatch, name, vendor, config):
    """App `name` of `vendor` with `config`'s fields, as environment settings."""
    monkeypatch.setenv(f"IMSHIFT_APPS__{name.upper()}__VENDOR", vendor)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or callable(value):  # a clock a test may inject
            continue
        text = (json.dumps(value) if isinstance(value, (list, dict, tuple))
                else str(value).lower() if isinstance(value, bool) else str(value))
        monkeypatch.setenv(f"IMSHIFT_APPS__{name.upper()}__{field.name.upper()}", text)


def secrets_of(config):
    from imshift.logs import secret_fields
    return [s for s in secret_fields(config) if s]


def run(*args):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_check_tells_a_right_secret_from_a_wrong_one(env, monkeypatch, vendor):
    box = VENDORS[vendor].sandbox()
    with served(box) as url:
        good, bad = box.config(url), box.config(url, wrong_secret=True)
        configure(monkeypatch, "good", vendor, good)
        configure(monkeypatch, "bad", vendor, bad)
        monkeypatch.delenv("IMSHIFT_APPS__NEW__VENDOR")
        monkeypatch.delenv("IMSHIFT_APPS__NEW__SANDBOX")
        from cryptography.fernet import Fernet
        monkeypatch.setenv("IMSHIFT_TOKEN_KEY", Fernet.generate_key().decode())  # Maxim's passwords
        title = VENDORS[vendor].title

        result, out = run("check", "good")
        assert result.exit_code == 0, out
        assert re.search(rf"good \({title}[^)]*\): reachable, credentials accepted, {title}.* API answered",
                         out), out
        if vendor == "openim":
            assert "OpenIM v3 API answered" in out, out  # the version the server answered

        result, out = run("check")  # every configured app, one line each
        assert result.exit_code == 1, out
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 2, result.output
        assert "credentials refused" in out and "bad (" in out, out
        for secret in secrets_of(good) + secrets_of(bad):
            assert secret not in result.output

        # A dry run checks the app it uses and refuses in one line, creating nothing.
        (env / "users.csv").write_text("user_id,name\nalice1,Alice\n", encoding="utf-8")
        result, out = run("migrate", "users", "--from", "bad", "--to", "bad", "--input",
                          str(env / "users.csv"), "--dry-run")
        assert result.exit_code == 2, out
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert "'bad'" in out or "bad (" in out, out
        assert "credentials refused" in out and "`imshift check bad`" in out, out
        result, out = run("migrate", "run", "--from", "good", "--to", "bad", "--users",
                          str(env / "users.csv"), "--dry-run")
        assert result.exit_code == 2 and "`imshift check bad`" in out, out
        result, out = run("status", "--json")
        assert json.loads(result.output)["jobs"] == [] and json.loads(result.output)["runs"] == [], out

        result, out = run("migrate", "users", "--from", "good", "--to", "good", "--input",
                          str(env / "users.csv"), "--dry-run")
        assert result.exit_code in (0, 3) and "Dry run: nothing sent" in out, out


def test_check_says_an_unreachable_vendor_and_an_unknown_app(env, monkeypatch):
    box = VENDORS["netease"].sandbox()
    with served(box) as url:
        config = box.config(url)
    configure(monkeypatch, "gone", "netease", config)  # the server has stopped: nothing listens
    result, out = run("check", "gone", "nosuch")
    assert result.exit_code == 1, out
    assert "gone (NetEase" in out and "not reachable" in out, out
    assert "nosuch: no vendor app named 'nosuch'" in out, out


def test_check_goes_through_the_apps_rate_limiter(env, monkeypatch):
    """Checks in a row share the app's schedule with every other command on
    this database: at 1 call/s, three checks take two seconds at least."""
    box = VENDORS["rongcloud"].sandbox()
    with served(box) as url:
        configure(monkeypatch, "rc", "rongcloud", box.config(url))
        monkeypatch.setenv("IMSHIFT_APPS__RC__RATES", json.dumps({"get_profiles": 1}))
        began = time.monotonic()
        for _ in range(3):
            result, out = run("check", "rc")
            assert result.exit_code == 0, out
        assert time.monotonic() - began >= 1.5
        assert box.stats()["calls"]["get_profiles"] == 3
