"""The job engine's test helpers (tests/jobs/helpers.py) for the tests of
the API, the page and the metrics, which live beside the CLI's tests; and
the API tests' client (the `api` fixture) and CLI runner."""

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from imshift.api import create_app
from imshift.cli import app as cli_app

_spec = importlib.util.spec_from_file_location("job_helpers", Path(__file__).parent / "jobs" / "helpers.py")
_helpers = importlib.util.module_from_spec(_spec)
sys.modules["job_helpers"] = _helpers  # dataclasses look their module up there
_spec.loader.exec_module(_helpers)

context, wait_until_done, write_users = _helpers.context, _helpers.wait_until_done, _helpers.write_users

TOKEN = "api-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api():
    """A sync client over the ASGI app (httpx's ASGITransport is async only)."""
    import asyncio

    def make(ctx, token=TOKEN, host="127.0.0.1"):
        app = create_app(ctx, token)
        transport = httpx.ASGITransport(app=app, client=(host, 40000))

        class Sync:
            def request(self, method, url, **kw):
                async def go():
                    async with httpx.AsyncClient(transport=transport, base_url="http://imshift.test",
                                                 headers=AUTH if token else {}) as c:
                        return await c.request(method, url, **kw)
                return asyncio.run(go())

            def get(self, url, **kw):
                return self.request("GET", url, **kw)

            def post(self, url, **kw):
                return self.request("POST", url, **kw)

        return Sync()

    return make


def cli(monkeypatch, database_url, *args):
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", database_url)
    monkeypatch.setenv("IMSHIFT_CONFIG", "/nonexistent/imshift.toml")
    monkeypatch.setenv("IMSHIFT_APPS__NEW__VENDOR", "netease")
    monkeypatch.setenv("IMSHIFT_APPS__NEW__SANDBOX", "true")
    monkeypatch.delenv("REDIS_URL", raising=False)
    return CliRunner().invoke(cli_app, list(args))


def cli_refusal(monkeypatch, database_url, *args):
    """The one-line reason the CLI gives for refusing `args`."""
    result = cli(monkeypatch, database_url, *args)
    assert result.exit_code != 0, result.output
    text = " ".join((result.stderr or result.output).split())
    assert text.startswith("error: "), text
    return text.removeprefix("error: ")


def fire(ctx, schedule_id, late: float = 1.0):
    """Fire a schedule as a scheduler would `late` seconds after it is due (a
    fake clock, as tests/jobs/test_schedules.py), its job started for real."""
    from imshift.jobs import control, schedules

    due = schedules.get(ctx.engine, schedule_id).next_at
    firing = schedules.Firing(ctx.engine, ctx.target,
                              lambda job_id: control.start(ctx.engine, ctx.broker, job_id),
                              ctx.settings.chunk_size)
    fired = [f for f in schedules.fire_due(firing, due + late) if f.schedule_id == schedule_id]
    assert len(fired) == 1, fired
    return fired[0]
