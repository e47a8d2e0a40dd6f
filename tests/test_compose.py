"""docker-compose.yml, checked without a Docker engine: its services hang
together, its commands are real imshift commands, and the example settings
it mounts reach the sandboxes with the right credentials."""

import asyncio
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from imshift.cli import app
from imshift.context import vendor_config
from imshift.settings import Settings
from imshift.vendors.vocabulary import Outcome, Profile
from imshift.vendors.http import http_client
from imshift.vendors.registry import VENDORS
from imshift.vendors.sandbox.serve import served

ROOT = Path(__file__).resolve().parents[1]
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose["services"]


def test_services_reach_each_other_by_name():
    for name in ("worker", "cli", "api"):
        env = services[name]["environment"]
        assert make_url(env["REDIS_URL"]).host == "redis"
        db = make_url(env["DATABASE_URL"])
        pg = services["postgres"]["environment"]
        assert (db.host, db.username, db.password, db.database) == (
            "postgres", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
        assert set(services[name]["depends_on"]) == {"redis", "postgres"}
        mounts = dict(v.split(":")[:2] for v in services[name]["volumes"])
        assert mounts["./examples/compose.toml"] == env["IMSHIFT_CONFIG"]
        assert (ROOT / "examples/compose.toml").is_file()


def test_the_image_holds_every_package_the_project_installs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {p.split("/")[0] for p in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M))
    assert folders <= copied


@pytest.mark.parametrize("service", ["worker", "sandbox", "api"])
def test_service_commands_are_imshift_commands(service):
    command = services[service]["command"]
    result = CliRunner().invoke(app, [command[0], "--help"])
    assert result.exit_code == 0, result.output
    for option in command[1:]:
        if option.startswith("--"):
            assert option in result.output, option


@pytest.mark.loopback
def test_the_example_apps_talk_to_the_sandboxes():
    apps = Settings(**tomllib.loads((ROOT / "examples/compose.toml").read_text())).apps
    assert {a.vendor for a in apps.values()} == set(VENDORS)
    for name, settings in apps.items():
        vendor = VENDORS[settings.vendor]
        box = vendor.sandbox()
        with served(box) as url:
            port = url.rsplit(":", 1)[1]
            fields = {k: re.sub(r"http://sandbox:\d+", url, v) if isinstance(v, str)
                      else [re.sub(r"http://sandbox:\d+", url, x) for x in v] if isinstance(v, list) else v
                      for k, v in settings.vendor_config().items()}
            assert str(vendor.sandbox_port) in str(settings.vendor_config()), name
            config = vendor_config(name, vendor.config, fields)

            async def register():
                async with http_client() as http:
                    return await vendor.client(config, http).register_users([Profile("compose_1", "C")])

            [result] = asyncio.run(register())
            assert result.outcome is Outcome.OK, (name, port, result)


def test_an_empty_setting_is_an_empty_string_not_json():
    from imshift.vendors.rongcloud import RongCloudConfig
    config = vendor_config("a", RongCloudConfig, {"app_key": "k", "app_secret": "s", "header_prefix": ""})
    assert config.header_prefix == ""


def test_redis_and_postgres_take_no_host_port():
    # Published on the host they would clash with a local Redis or PostgreSQL.
    for name in ("redis", "postgres"):
        assert "ports" not in services[name], name
    for mapping in services["sandbox"].get("ports", []):
        assert mapping.startswith("127.0.0.1:"), mapping


def test_the_token_key_is_required_and_the_documented_way_makes_one():
    from cryptography.fernet import Fernet

    value = services["worker"]["environment"]["IMSHIFT_TOKEN_KEY"]
    # ${VAR:?message}: compose refuses to start while the key is unset or empty.
    assert re.fullmatch(r"\$\{IMSHIFT_TOKEN_KEY:\?[^}]+\}", value), value
    assert services["cli"]["environment"]["IMSHIFT_TOKEN_KEY"] == value
    text = (ROOT / "docker-compose.yml").read_text()
    assert "docker compose run --rm --no-deps cli keygen" in text
    result = CliRunner().invoke(app, ["keygen"])
    assert result.exit_code == 0
    Fernet(result.output.strip().encode())  # a valid key


def test_the_compose_settings_pass_the_checks_commands_make():
    from imshift.context import Context
    from cryptography.fernet import Fernet

    env = services["worker"]["environment"]
    settings = Settings(redis_url=env["REDIS_URL"], database_url=env["DATABASE_URL"],
                        token_key=Fernet.generate_key().decode(),
                        **tomllib.loads((ROOT / "examples/compose.toml").read_text()))
    ctx = Context(settings)
    ctx.check()  # a shared database, a well-formed key
    for name in settings.apps:
        ctx.config(name)  # every example app's fields fit its vendor


def test_the_api_needs_its_token_and_listens_on_loopback_only():
    api = services["api"]
    assert api["environment"]["IMSHIFT_API_TOKEN"].startswith("${IMSHIFT_API_TOKEN:?")
    assert api["environment"]["IMSHIFT_TOKEN_KEY"] == services["worker"]["environment"]["IMSHIFT_TOKEN_KEY"]
    assert all(port.startswith("127.0.0.1:") for port in api["ports"])

