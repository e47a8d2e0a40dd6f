"""Shared fixtures: a database per test run on SQLite and on PostgreSQL.

PostgreSQL tests use a throwaway database (created here, dropped after) on
the server named by IMSHIFT_TEST_POSTGRES (default: the local one, trust auth).
"""

import os

import pytest

# pytest-xdist's workers start with COLUMNS=80, which rich reads once when a
# module builds its Console: drop it so tables are as wide as in a plain run.
os.environ.pop("COLUMNS", None)

from testsupport import throwaway_database


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    try:
        with throwaway_database(prefix="imshift_test") as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/imshift.db"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    # Leave the shared throwaway database empty for the next test.
    from sqlalchemy import create_engine, text
    from sqlmodel import SQLModel
    from imshift.models.db import normalise_url
    engine = create_engine(normalise_url(url))
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture
def redis_server():
    """A private redis-server on a free port (never the machine's shared one)."""
    from testsupport import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A folder of its own for a CLI test: an embedded SQLite database there,
    no Redis, no config file, and app `new` the built-in NetEase sandbox."""
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "IMSHIFT_REDIS_URL", "IMSHIFT_TOKEN_KEY", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMSHIFT_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("IMSHIFT_DATABASE_URL", f"sqlite:///{tmp_path}/imshift.db")
    monkeypatch.setenv("IMSHIFT_APPS__NEW__VENDOR", "netease")
    monkeypatch.setenv("IMSHIFT_APPS__NEW__SANDBOX", "true")
    return tmp_path
