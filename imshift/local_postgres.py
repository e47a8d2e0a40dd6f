"""A throwaway PostgreSQL database for tests and benchmarks: created on the
server `admin_url` names, dropped afterwards (never the server's own data)."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import psycopg
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("IMSHIFT_TEST_POSTGRES", DEFAULT_ADMIN_URL)


@contextlib.contextmanager
def throwaway_database(admin: str | None = None, prefix: str = "imshift_tmp") -> Iterator[str]:
    url = make_url(admin or admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=url.host, port=url.port or 5432, user=url.username,
                    password=url.password, dbname=url.database, autocommit=True)
    try:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL at {url.host}:{url.port or 5432} is needed "
                           f"(scripts/test starts it): {exc}") from None
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
