"""The schema's migration path, on SQLite and PostgreSQL."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from imshift.models import make_engine
from imshift.models.db import normalise_url
from imshift.models.migrate import SCRIPTS, alembic_config


def head() -> str:
    from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    return ScriptDirectory.from_config(config).get_current_head()


def revision(engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_migrations_build_exactly_the_tables_the_code_declares(database_url):
    engine = create_engine(normalise_url(database_url))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        # A table change without a migration shows up here.
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    engine.dispose()


def test_a_new_database_starts_at_the_latest_revision(database_url):
    engine = make_engine(database_url)
    assert revision(engine) == head()
    assert {"jobs", "items", "job_counts"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_tables_made_before_migrations_are_adopted(database_url):
    engine = create_engine(normalise_url(database_url))
    with engine.begin() as conn:  # the first release's tables, without alembic's record
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
    make_engine(database_url).dispose()
    assert revision(engine) == head()
    assert "claimed_at" in {c["name"] for c in inspect(engine).get_columns("items")}
    engine.dispose()


def test_a_database_at_an_older_revision_is_brought_up_to_date(database_url):
    engine = create_engine(normalise_url(database_url))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    assert "claimed_at" not in {c["name"] for c in inspect(engine).get_columns("items")}
    make_engine(database_url).dispose()
    assert "claimed_at" in {c["name"] for c in inspect(engine).get_columns("items")}
    assert revision(engine) == head() == "0008"
    assert "sent_at" in {c["name"] for c in inspect(engine).get_columns("items")}
    assert "run_id" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert {"list_cursor", "planner", "group_cursor"} <= {c["name"] for c in inspect(engine).get_columns("runs")}
    assert "listed_groups" in inspect(engine).get_table_names()
    engine.dispose()
