"""Typos in the settings are refused, not passed as defaults (issue 21,
item 9): one line naming the key, where it came from (the file or the
environment variable) and the valid choices; no job is created."""

import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from imshift.cli import app

NETEASE_FIELDS = ("app_key, app_secret, region, base_url, team_invite_msg, broadcast_offline, "
                  "concurrency, vendor, rates, caps, group_size, sandbox")
NETEASE_OPERATIONS = ("add_members, broadcast, create_group, get_friends, get_members, get_profiles, "
                      "import_friends, issue_token, register, send, send_group, update_profile")


def refusal(env, *args):
    (env / "users.csv").write_text("user_id\nalice\n", encoding="utf-8")
    result = CliRunner().invoke(app, list(args or ("migrate", "users", "--from", "sandbox-rongcloud",
                                                   "--to", "new", "--input", "users.csv", "--dry-run")))
    assert result.exit_code == 2, result.output
    lines = (result.stderr or result.output).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # one line, no dump, no URL
    engine = create_engine(f"sqlite:///{env}/imshift.db")
    assert "jobs" not in inspect(engine).get_table_names() or not engine.connect().exec_driver_sql(
        "select count(*) from jobs").scalar()
    return lines[0]


def configure(env, monkeypatch, toml: str):
    (env / "imshift.toml").write_text(toml, encoding="utf-8")
    monkeypatch.setenv("IMSHIFT_CONFIG", str(env / "imshift.toml"))
    for name in ("IMSHIFT_APPS__NEW__VENDOR", "IMSHIFT_APPS__NEW__SANDBOX"):
        monkeypatch.delenv(name, raising=False)
    return str(env / "imshift.toml")


def test_a_rate_for_no_operation_names_the_key_the_file_and_the_operations(env, monkeypatch):
    path = configure(env, monkeypatch, '[apps.new]\nvendor = "netease"\nsandbox = true\n'
                                       'rates = { registr = 20 }\n')
    assert refusal(env) == (f"error: configuration: apps.new.rates.registr ({path}) is not an operation "
                            f"of NetEase Yunxin: choose from {NETEASE_OPERATIONS}")


def test_a_cap_for_no_operation_or_window_is_refused(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_APPS__NEW__CAPS__BRODCAST__DAY", "3")
    assert refusal(env) == ("error: configuration: apps.new.caps.brodcast (environment variable "
                            "IMSHIFT_APPS__NEW__CAPS__BRODCAST__DAY) is not an operation of NetEase "
                            f"Yunxin: choose from {NETEASE_OPERATIONS}")
    monkeypatch.delenv("IMSHIFT_APPS__NEW__CAPS__BRODCAST__DAY")
    path = configure(env, monkeypatch, '[apps.new]\nvendor = "netease"\nsandbox = true\n'
                                       'caps = { broadcast = { week = 3 } }\n')
    assert refusal(env) == (f"error: configuration: setting apps.new.caps.broadcast.week ({path}): "
                            "Input should be 'minute', 'hour' or 'day'")


def test_a_misspelt_vendor_field_from_the_environment_names_the_variable_and_the_fields(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_APPS__NEW__APP_SECRT", "s3cret-typo")
    line = refusal(env)
    assert line == ("error: configuration: apps.new.app_secrt (environment variable "
                    "IMSHIFT_APPS__NEW__APP_SECRT) is not a setting of a NetEase Yunxin app: "
                    f"choose from {NETEASE_FIELDS}")
    assert "s3cret-typo" not in line


def test_a_misspelt_vendor_key_or_name_says_which_vendors_there_are(env, monkeypatch):
    path = configure(env, monkeypatch, '[apps.new]\nvendr = "netease"\nsandbox = true\n')
    assert refusal(env) == (f"error: configuration: app 'new' ({path}) names no vendor (vendr: not a "
                            "setting): set vendor to one of rongcloud, netease, openim, maxim")
    configure(env, monkeypatch, '[apps.new]\nvendor = "netaese"\nsandbox = true\n')
    assert refusal(env) == (f"error: configuration: apps.new.vendor ({path}) is 'netaese', not a vendor: "
                            "choose one of rongcloud, netease, openim, maxim")


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_value_of_the_wrong_type_is_one_line_not_a_validation_dump(env, monkeypatch, where):
    if where == "file":
        source = configure(env, monkeypatch, '[apps.new]\nvendor = "netease"\nsandbox = true\n'
                                             'group_size = "big"\n')
    else:
        monkeypatch.setenv("IMSHIFT_APPS__NEW__GROUP_SIZE", "big")
        source = "environment variable IMSHIFT_APPS__NEW__GROUP_SIZE"
    assert refusal(env) == (f"error: configuration: setting apps.new.group_size ({source}): "
                            "Input should be a valid integer, unable to parse string as an integer")


def test_a_config_file_that_is_not_there_is_named_when_its_app_is_missing(env, monkeypatch):
    monkeypatch.setenv("IMSHIFT_CONFIG", str(env / "imshfit.toml"))
    monkeypatch.delenv("IMSHIFT_APPS__NEW__VENDOR")
    monkeypatch.delenv("IMSHIFT_APPS__NEW__SANDBOX")
    assert refusal(env) == (f"error: no vendor app named 'new' (apps: none configured; IMSHIFT_CONFIG "
                            f"names {env / 'imshfit.toml'}, which does not exist; the built-in sandboxes "
                            "are sandbox-rongcloud, sandbox-netease, sandbox-openim, sandbox-maxim)")


def test_a_file_that_is_not_toml_is_named(env, monkeypatch):
    path = configure(env, monkeypatch, "[apps.new]\nvendor = netease\n")
    assert refusal(env).startswith(f"error: configuration: {path} is not TOML: Invalid value (at line 2")
