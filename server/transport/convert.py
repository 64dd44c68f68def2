"""Proto <-> domain records. Nothing here decides a rule; it only translates."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import status_pb2
from orders.v1 import orders_pb2 as pb

from ..domain.records import Customer, NewItem, Order, OrderFilter, Status, SummaryRow
from ..domain.seeding import Phase, Progress
from ..domain.validation import Violations
from .status import to_status_proto

__all__ = [
    "customer_message",
    "new_items",
    "order_filter",
    "order_message",
    "seed_message",
    "summary_message",
]

_STATUS_TO_PROTO = {
    Status.DRAFT: pb.Order.DRAFT,
    Status.PAID: pb.Order.PAID,
    Status.SHIPPED: pb.Order.SHIPPED,
    Status.CANCELLED: pb.Order.CANCELLED,
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}

_PHASES = {
    Phase.STARTED: pb.SeedResponse.PHASE_STARTED,
    Phase.CUSTOMERS: pb.SeedResponse.PHASE_CUSTOMERS,
    Phase.ORDERS: pb.SeedResponse.PHASE_ORDERS,
    Phase.ITEMS: pb.SeedResponse.PHASE_ITEMS,
    Phase.COMMITTING: pb.SeedResponse.PHASE_COMMITTING,
    Phase.DONE: pb.SeedResponse.PHASE_DONE,
    Phase.FAILED: pb.SeedResponse.PHASE_FAILED,
}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def customer_message(customer: Customer) -> pb.Customer:
    return pb.Customer(
        id=customer.id,
        email=customer.email,
        name=customer.name,
        created_at=_timestamp(customer.created_at),
    )


def order_message(order: Order) -> pb.Order:
    return pb.Order(
        id=order.id,
        customer_id=order.customer.id,
        customer=customer_message(order.customer),
        status=_STATUS_TO_PROTO[order.status],
        is_archived=order.is_archived,
        total_cents=order.total_cents,
        items=[
            pb.OrderItem(
                id=item.id,
                sku=item.sku,
                quantity=item.quantity,
                unit_price_cents=item.unit_price_cents,
            )
            for item in order.items
        ],
        created_at=_timestamp(order.created_at),
        updated_at=_timestamp(order.updated_at),
    )


def summary_message(rows: list[SummaryRow]) -> pb.GetSummaryResponse:
    return pb.GetSummaryResponse(
        customers=[
            pb.CustomerSummary(
                customer_id=row.customer_id,
                email=row.email,
                order_count=row.order_count,
                total_cents=row.total_cents,
            )
            for row in rows
        ]
    )


def seed_message(progress: Progress, request_id: str | None) -> pb.SeedResponse:
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(int(progress.elapsed_seconds * 1e9))
    error: status_pb2.Status | None = None
    if progress.error is not None:
        full = to_status_proto(progress.error, request_id)
        # The stream's last line carries code and message; the details travel in the trailer.
        error = status_pb2.Status(code=full.code, message=full.message)
    return pb.SeedResponse(
        phase=_PHASES[progress.phase],
        customers_done=progress.customers_done,
        customers_total=progress.customers_total,
        orders_done=progress.orders_done,
        orders_total=progress.orders_total,
        items_done=progress.items_done,
        items_total=progress.items_total,
        elapsed=elapsed,
        done=progress.done,
        error=error,
    )


def new_items(items: list[pb.OrderItem]) -> list[NewItem]:
    return [
        NewItem(sku=item.sku, quantity=item.quantity, unit_price_cents=item.unit_price_cents)
        for item in items
    ]


def order_filter(request: pb.ListOrdersRequest, violations: Violations) -> OrderFilter:
    """The filters of a ListOrders request; an unknown status number is added to
    `violations`, so that it is reported with every other bad field."""
    status: Status | None = None
    if request.status != pb.Order.STATUS_UNSPECIFIED:
        status = _STATUS_FROM_PROTO.get(request.status)
        if status is None:
            names = ", ".join(s.value for s in Status)
            violations.add("status", f"must be one of {names}, got {request.status}")
    return OrderFilter(
        status=status,
        email=request.email or None,
        customer_id=request.customer_id or None,
        include_archived=request.include_archived,
    )
