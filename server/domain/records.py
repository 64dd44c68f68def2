"""What the domain hands around: plain, immutable records, free of protobuf and SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

__all__ = [
    "Customer",
    "IdempotencyKey",
    "ItemRow",
    "NewItem",
    "Order",
    "OrderFilter",
    "Page",
    "Status",
    "SummaryRow",
    "epoch_us",
]

T = TypeVar("T")


class Status(StrEnum):
    DRAFT = "DRAFT"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_us(moment: datetime) -> int:
    """An aware datetime as microseconds since the epoch: what the records carry."""
    return (moment - _EPOCH) // _MICROSECOND


class Customer(NamedTuple):
    """A customer as the statements read it, column for column. Times are microseconds since
    the epoch (UTC): what a protobuf Timestamp is made of, with no datetime in between."""

    id: int
    email: str
    name: str
    created_us: int


@dataclass(frozen=True, slots=True)
class NewItem:
    sku: str
    quantity: int
    unit_price_cents: int


# An order's item as the statements read it: (order_id, id, sku, quantity, unit_price_cents).
# A plain tuple, untouched from the database driver to the protobuf message: a page holds
# up to 5,000 of them.
ItemRow = tuple[int, int, str, int, int]


class Order(NamedTuple):
    """An order with its customer's columns, as the statements read it (one row), and its
    items. `status` is a Status value."""

    id: int
    customer_id: int
    status: str
    is_archived: bool
    total_cents: int
    created_us: int
    updated_us: int
    email: str
    name: str
    customer_created_us: int
    items: Sequence[ItemRow]


@dataclass(frozen=True, slots=True)
class OrderFilter:
    status: Status | None = None
    email: str | None = None
    customer_id: int | None = None
    include_archived: bool = False


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A create's idempotency key (the `idempotency-key` header), the create it came with and
    a digest of that request."""

    key: str
    method: str
    fingerprint: str


class SummaryRow(NamedTuple):
    """A tuple, unlike the other records: GetSummary makes fifty a call on its hot path, and a
    frozen dataclass costs several times more to build."""

    customer_id: int
    email: str
    order_count: int
    total_cents: int
