"""Schema migrations (alembic) over the SQLModel metadata; run by make_engine."""
