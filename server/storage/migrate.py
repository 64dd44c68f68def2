"""Applies the Alembic migrations: the same files on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

__all__ = ["migrate"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def migrate(engine: Engine, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        driver: Any = connection.connection.driver_connection
        if sqlite:
            # SQLite's batch mode rebuilds a table by copy-and-rename, which foreign keys
            # pointing at it would refuse; they are switched off (outside any transaction,
            # where the pragma takes effect) and checked as a whole afterwards.
            driver.execute("PRAGMA foreign_keys = OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys = ON")
