"""The migrations own the DDL; the ORM models must describe the same tables and columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from server.storage.database import Database
from server.storage.migrate import migrate
from server.storage.schema import Base

# In process: no server (scripts/test --fast runs these).
pytestmark = pytest.mark.fast


def test_models_match_the_migrated_schema(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'schema.sqlite3'}")
    migrate(database.engine)
    inspector = inspect(database.engine)
    migrated = {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }
    modelled = {table.name: set(table.columns.keys()) for table in Base.metadata.sorted_tables}
    database.dispose()
    assert migrated == modelled


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'twice.sqlite3'}")
    migrate(database.engine)
    migrate(database.engine)  # a second run of `scripts/run` must not fail
    database.dispose()
