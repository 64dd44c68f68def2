"""Bulk loading for Seed: a constant number of statements whatever the number of rows.

PostgreSQL gets COPY FROM STDIN; SQLite gets one executemany per table fed by a generator.
Rows are streamed from iterators, never built as whole lists.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from .. import tracing
from .database import count_statement

__all__ = ["BulkLoader"]

_TABLES = frozenset({"customers", "orders", "order_items", "customer_totals"})


class BulkLoader:
    def __init__(self, session: Session) -> None:
        self._session = session
        connection = session.connection()
        self._dialect = connection.dialect.name
        self._driver: Any = connection.connection.driver_connection

    def timestamp(self, value: datetime) -> Any:
        """`value` as the column stores it (SQLAlchemy writes naive UTC text on SQLite)."""
        if self._dialect == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def reserve_ids(self, table: str, count: int) -> Sequence[int]:
        """`count` ids no other writer will use, in one statement."""
        assert table in _TABLES
        if count == 0:
            return ()
        if self._dialect == "postgresql":
            # nextval is safe against concurrent inserts; the values need not be contiguous.
            result = self._session.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                    "FROM generate_series(1, :count)"
                ),
                {"table": table, "count": count},
            )
            ids = array("q")
            for chunk in result.scalars().partitions(10_000):
                ids.extend(chunk)
            return ids
        # SQLite: this write transaction holds the database's write lock (BEGIN IMMEDIATE).
        highest = self._session.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar()
        start = int(highest or 0) + 1
        return range(start, start + count)

    def load(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
        assert table in _TABLES
        names = ", ".join(columns)
        count_statement()
        if self._dialect == "postgresql":
            statement = f"COPY {table} ({names}) FROM STDIN"
        else:
            marks = ", ".join("?" for _ in columns)
            statement = f"INSERT INTO {table} ({names}) VALUES ({marks})"
        if tracing.tracer is None:
            self._send(statement, rows)
        else:
            system = "postgresql" if self._dialect == "postgresql" else "sqlite"
            tracing.statement(system, statement, lambda: self._send(statement, rows), _no_count)

    def _send(self, statement: str, rows: Iterable[tuple[Any, ...]]) -> None:
        if self._dialect == "postgresql":
            with self._driver.cursor() as cursor:
                with cursor.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
        else:
            cursor = self._driver.cursor()
            try:
                cursor.executemany(statement, rows)
            finally:
                cursor.close()


def _no_count(_result: None) -> None:
    """The rows of a load are counted by the seed's phases, not by the statement."""
    return None
