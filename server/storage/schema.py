"""The tables as typed SQLAlchemy 2 models, for queries.

The DDL (constraints, indexes, the trigram index) lives in the Alembic migrations, the one
place that defines the schema; tests/test_schema.py checks the two agree on tables and columns.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "STATUSES",
    "Base",
    "CustomerRow",
    "CustomerTotalRow",
    "OrderEventRow",
    "OrderEventsPrunedRow",
    "OrderItemRow",
    "OrderRow",
]

STATUSES = ("DRAFT", "PAID", "SHIPPED", "CANCELLED")

# SQLite only gives INTEGER PRIMARY KEY its rowid behaviour (auto-assigned ids) for "INTEGER".
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class CustomerRow(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    # email.lower(), computed by the server: what uniqueness and the email filter compare.
    email_key: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OrderRow(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("customers.id", ondelete="RESTRICT")
    )
    status: Mapped[str] = mapped_column(String(16))
    is_archived: Mapped[bool] = mapped_column(Boolean, default=False)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OrderItemRow(Base):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="RESTRICT"))
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)


class CustomerTotalRow(Base):
    """Per-customer rollup of PAID, non-archived orders: what GetSummary reads.

    Kept exact in the same transaction as every write that changes it, so the summary is an
    index walk rather than an aggregate over every order, and one that needs no join.
    """

    __tablename__ = "customer_totals"

    customer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("customers.id", ondelete="RESTRICT"), primary_key=True
    )
    order_count: Mapped[int] = mapped_column(BigInteger, default=0)
    total_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    # The customer's email, copied at its create (emails never change): the summary reads
    # this table alone (migration 0004).
    email: Mapped[str] = mapped_column(String(254))


class IdempotencyKeyRow(Base):
    """A create's idempotency key, written in the create's own transaction."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OrderEventRow(Base):
    """The outbox: one row per change of an order, written in the change's transaction
    (storage/events.py; the ordering of positions is migration 0005's)."""

    __tablename__ = "order_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    position: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[int] = mapped_column(BigInteger)
    customer_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[str] = mapped_column(Text)  # the order after the change, as JSON


class OrderEventsPrunedRow(Base):
    """One row: the last position retention deleted (0: none yet)."""

    __tablename__ = "order_events_pruned"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    through: Mapped[int] = mapped_column(BigInteger)
