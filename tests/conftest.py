"""Shared fixtures: a database per test run on SQLite and on PostgreSQL.

PostgreSQL tests use a throwaway database (created here, dropped after) on
the server named by IMSHIFT_TEST_POSTGRES (default: the local one, trust auth).
"""

import os
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("IMSHIFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin = make_url(ADMIN_URL)
    name = f"imshift_test_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=admin.host, port=admin.port or 5432, user=admin.username,
                    password=admin.password, dbname=admin.database, autocommit=True)
    try:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {admin.host}:{admin.port} is needed for these tests "
                    f"(scripts/test starts it): {exc}")
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(**conninfo) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    from redis_server import RedisServer

    with RedisServer() as server:
        yield server
