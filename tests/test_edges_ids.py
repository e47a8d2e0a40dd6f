"""Job, run and schedule ids are never reused, on SQLite and PostgreSQL:
a removed job's id is not the next job's, so `results 1` always shows the
same job."""

from sqlalchemy import create_engine, text

from imshift.models.db import normalise_url

from api_support import cli


def test_ids_of_removed_jobs_runs_and_schedules_are_not_taken_again(monkeypatch, tmp_path, database_url):
    bad = tmp_path / "bad.csv"  # read part-way, then refused: its job (or run) is removed
    bad.write_bytes(b"user_id,name\nu1,Ann\nu2,\xff\xfeBob\n")
    good = tmp_path / "good.csv"
    good.write_text("user_id,name\nalice,Alice\n", encoding="utf-8")

    result = cli(monkeypatch, database_url, "migrate", "users", "--from", "new", "--to", "new",
                 "--input", str(bad), "--dry-run")
    assert result.exit_code == 2 and "Nothing was created" in result.output, result.output
    result = cli(monkeypatch, database_url, "migrate", "users", "--from", "new", "--to", "new",
                 "--input", str(good), "--dry-run")
    assert result.exit_code == 0 and "job 2:" in result.output, result.output

    result = cli(monkeypatch, database_url, "migrate", "run", "--from", "new", "--to", "new",
                 "--users", str(bad), "--dry-run")
    assert result.exit_code == 2, result.output
    result = cli(monkeypatch, database_url, "migrate", "run", "--from", "new", "--to", "new",
                 "--users", str(good), "--dry-run")
    assert result.exit_code == 0 and "run R2 " in result.output, result.output

    # Cancelling a job never planned whole removes it: the next job does not take its id.
    engine = create_engine(normalise_url(database_url))
    with engine.begin() as conn:  # a producer that died after storing one batch
        job = conn.execute(text("INSERT INTO jobs (kind, operation, app, status, params, total, "
                                "created_at) VALUES ('migrate_users', 'register', 'new', "
                                "'planning', '{}', 0, 0) RETURNING id")).scalar_one()
        conn.execute(text("INSERT INTO items (job_id, seq, key, row, payload, state, attempts) "
                          "VALUES (:j, 0, 'u', 2, '{}', 'pending', 0)"), {"j": job})
        conn.execute(text("INSERT INTO job_counts (job_id, state, n) VALUES (:j, 'pending', 1)"),
                     {"j": job})
    result = cli(monkeypatch, database_url, "cancel", str(job))
    assert result.exit_code == 0, result.output
    result = cli(monkeypatch, database_url, "migrate", "users", "--from", "new", "--to", "new",
                 "--input", str(good), "--dry-run")
    assert f"job {job + 1}:" in result.output, result.output

    to = tmp_path / "to.txt"
    to.write_text("alice\n", encoding="utf-8")
    add = ["schedule", "add", "--at", "2099-01-01T09:00", "--", "send", "--app", "new",
           "--sender", "alice", "--to", str(to), "--text", "hi"]
    assert "schedule 1:" in " ".join(cli(monkeypatch, database_url, *add).output.split())
    with engine.begin() as conn:  # however a schedule went, its id stays its own
        conn.execute(text("DELETE FROM schedules"))
    result = cli(monkeypatch, database_url, *add)
    assert "schedule 2:" in " ".join(result.output.split()), result.output
    engine.dispose()
