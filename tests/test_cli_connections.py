"""Commands run one after another in one process (a test's runner, a script
calling the CLI) keep at most one database pool open: PostgreSQL counts idle
connections against max_connections, and the pools earlier commands left
held 40 of its 100 in one test process (imshift/clibase.py load_context)."""

from sqlalchemy import create_engine, text

from imshift.models.db import normalise_url

from api_support import cli


def test_commands_leave_no_connections_open(monkeypatch, tmp_path, postgres_url):
    users = tmp_path / "users.csv"
    users.write_text("user_id,name\nalice,Alice\n", encoding="utf-8")
    watcher = create_engine(normalise_url(postgres_url))
    database = postgres_url.rsplit("/", 1)[1]

    def open_connections() -> int:
        with watcher.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                                     "AND pid <> pg_backend_pid()"), {"d": database}).scalar_one()

    try:
        first = cli(monkeypatch, postgres_url, "migrate", "users", "--from", "new", "--to", "new",
                    "--input", str(users), "--dry-run")
        assert first.exit_code == 0, first.output
        before = open_connections()
        for _ in range(5):
            for args in (["status"], ["status", "1"], ["results", "1"]):
                result = cli(monkeypatch, postgres_url, *args)
                assert result.exit_code == 0, result.output
        assert open_connections() == before
    finally:
        watcher.dispose()
