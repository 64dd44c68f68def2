"""What the domain hands around: plain, immutable records, free of protobuf and SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

__all__ = [
    "Customer",
    "IdempotencyKey",
    "Item",
    "NewItem",
    "Order",
    "OrderFilter",
    "Page",
    "Status",
    "SummaryRow",
]

T = TypeVar("T")


class Status(StrEnum):
    DRAFT = "DRAFT"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    email: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewItem:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    customer: Customer
    status: Status
    is_archived: bool
    total_cents: int
    items: tuple[Item, ...]
    created_at: datetime
    updated_at: datetime


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
