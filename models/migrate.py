"""Bring a database's schema up to date: a new database gets today's tables
in one step; an existing one gets the migrations it has not had yet."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # A migration may rebuild a table others point at (batch mode):
            # SQLite would refuse to drop the old copy with foreign keys on,
            # and the pragma only takes effect outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # SQLAlchemy's autobegun transaction; SQLite began none
        try:
            with conn.begin():
                _upgrade(conn)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def _upgrade(conn) -> None:
    # One migrator at a time across processes; the others wait, then
    # find the tables made.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7342001)")
    elif conn.dialect.name == "sqlite":
        # The write lock before the first look: SQLite's DDL is
        # transactional, so a second process sees all the tables or none.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    fresh = not inspect(conn).has_table("jobs")
    current = MigrationContext.configure(conn).get_current_revision()
    config = alembic_config(conn)
    if fresh:
        SQLModel.metadata.create_all(conn)
        command.stamp(config, "head")
    elif current is None:  # tables made before migrations existed: they are revision 1
        command.stamp(config, "0001")
        command.upgrade(config, "head")
    else:
        command.upgrade(config, "head")
