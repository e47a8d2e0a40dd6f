"""The engine: SQLite by default, PostgreSQL when the URL says so.
The schema is created, or migrated, on first use."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import create_engine

from .migrate import upgrade


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever spelling the user gave."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def json_text(value: Any) -> str:
    """JSON column text. orjson, not the json module, because the planner and
    every chunk's claim and record (de)serialise a JSON value per item
    (json.dumps: 1.4 of 9.4 s of planning 100k rows under pyinstrument)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses and json writes (an integer past 64 bits)
        return json.dumps(value)


json_value = orjson.loads
_JSON = {"json_serializer": json_text, "json_deserializer": json_value}


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            _create_private(Path(database).expanduser())
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **_JSON)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, **_JSON)
    upgrade(engine)
    return engine


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only: it holds ids,
    names and encrypted tokens. SQLite gives its -wal and -shm files the
    database file's permissions. An existing file is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def _sqlite_pragmas(connection, _record) -> None:
    # WAL lets progress queries read while a worker writes; a busy timeout
    # makes concurrent writers wait instead of failing.
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _wal(cursor, wait: float = 30.0) -> None:
    """Switch the file to WAL (it stays so). Two processes doing it at once
    on a new file (a worker pool, commands started together) can get
    "database is locked" at once, the busy timeout not applying to the
    switch: 1 of 40 such pairs here. So it is tried again until `wait`."""
    deadline = time.monotonic() + wait
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
