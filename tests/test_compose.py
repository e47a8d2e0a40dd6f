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

            async def register(vendor=vendor, config=config):  # bound: defined in the loop
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


def test_the_token_key_is_required():
    value = services["worker"]["environment"]["IMSHIFT_TOKEN_KEY"]
    # ${VAR:?message}: compose refuses to start while the key is unset or empty.
    assert re.fullmatch(r"\$\{IMSHIFT_TOKEN_KEY:\?[^}]+\}", value), value
    assert services["cli"]["environment"]["IMSHIFT_TOKEN_KEY"] == value


def readme_compose_steps():
    """The README's Docker paragraph and the commands of its first code
    block, in order (a line ending in a backslash joined to the next)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("`docker compose")
    section = text[start:text.index("\n## ", start)]
    block = re.search(r"((?:\n {4,}\S.*)+)", section).group(1)
    commands = block.replace("\\\n", " ").strip().splitlines()
    return section, [" ".join(c.split()) for c in commands]


def test_the_readme_first_steps_work_in_order(tmp_path):
    """Compose interpolates the whole file before running any service, so
    every `${VAR:?}` must be set before the first `docker compose` command;
    the step that sets them must need no compose (and so no key) itself."""
    import subprocess
    from cryptography.fernet import Fernet

    section, steps = readme_compose_steps()
    text = "\n".join(line for line in (ROOT / "docker-compose.yml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{(\w+):\?", text))
    read = set(re.findall(r"\$\{(\w+)", text))
    assert required == {"IMSHIFT_TOKEN_KEY", "IMSHIFT_API_TOKEN"}, required
    assert steps and "docker compose" not in steps[0], steps[0]
    subprocess.run(["bash", "-ec", steps[0]], cwd=tmp_path, check=True)
    dotenv = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines() if line)
    assert required <= set(dotenv), dotenv.keys()
    Fernet(dotenv["IMSHIFT_TOKEN_KEY"].encode())  # a valid key
    assert len(dotenv["IMSHIFT_API_TOKEN"]) >= 32
    later = steps[1:]
    assert later and all(s.startswith("docker compose ") for s in later), later
    assert later[0].startswith("docker compose up"), later
    for step in later:  # each service a step runs exists, its command is an imshift command
        ran = re.match(r"docker compose run --rm (\S+) (\S+)", step)
        if ran:
            assert ran.group(1) in services, step
            assert CliRunner().invoke(app, [ran.group(2), "--help"]).exit_code == 0, step
    named = set(re.findall(r"`(\w+)` service", section))
    assert named and named <= set(services), named
    told = set(re.findall(r"\bIMSHIFT_[A-Z_]+", section))
    assert required <= told <= read, (told, read)
    assert "keygen" not in section or "docker compose run --rm cli keygen" not in section


def test_the_compose_file_says_the_same_first_steps_as_the_readme():
    _, steps = readme_compose_steps()
    text = (ROOT / "docker-compose.yml").read_text()
    block = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#   "))
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert [" ".join(c.split()) for c in commands] == steps


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

