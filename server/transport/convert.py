"""Proto <-> domain records. Nothing here decides a rule; it only translates."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import status_pb2
from orders.v1 import orders_pb2 as pb

from ..domain.records import Customer, NewItem, Order, OrderFilter, Page, Status, SummaryRow
from ..domain.seeding import Phase, Progress
from ..domain.validation import Violations
from ..storage.events import EventRow
from .status import to_status_proto

__all__ = [
    "customer_message",
    "customers_page",
    "event_message",
    "new_items",
    "order_filter",
    "order_message",
    "orders_page",
    "seed_message",
    "summary_message",
]

_STATUS_TO_PROTO: dict[str, pb.Order.Status.ValueType] = {
    Status.DRAFT: pb.Order.DRAFT,
    Status.PAID: pb.Order.PAID,
    Status.SHIPPED: pb.Order.SHIPPED,
    Status.CANCELLED: pb.Order.CANCELLED,
}
_STATUS_FROM_PROTO = {number: Status(status) for status, number in _STATUS_TO_PROTO.items()}

_PHASES = {
    Phase.STARTED: pb.SeedResponse.PHASE_STARTED,
    Phase.CUSTOMERS: pb.SeedResponse.PHASE_CUSTOMERS,
    Phase.ORDERS: pb.SeedResponse.PHASE_ORDERS,
    Phase.ITEMS: pb.SeedResponse.PHASE_ITEMS,
    Phase.COMMITTING: pb.SeedResponse.PHASE_COMMITTING,
    Phase.DONE: pb.SeedResponse.PHASE_DONE,
    Phase.FAILED: pb.SeedResponse.PHASE_FAILED,
}


# Messages are filled field by field in place (`.add()` on a repeated field, then attributes):
# building nested messages with keyword arguments copies each into its parent, a copy per order
# and per item of every page, which is most of the work a read does in Python.


def _set_time(stamp: timestamp_pb2.Timestamp, us: int) -> None:
    """Microseconds since the epoch, set directly (not Timestamp.FromDatetime per field)."""
    stamp.seconds, micros = divmod(us, 1_000_000)
    stamp.nanos = micros * 1000


def _fill_customer(message: pb.Customer, customer: Customer) -> None:
    message.id, message.email, message.name = customer.id, customer.email, customer.name
    _set_time(message.created_at, customer.created_us)


def _fill_order(message: pb.Order, order: Order) -> None:
    message.id = order.id
    message.customer_id = order.customer_id
    customer = message.customer
    customer.id, customer.email, customer.name = order.customer_id, order.email, order.name
    _set_time(customer.created_at, order.customer_created_us)
    message.status = _STATUS_TO_PROTO[order.status]
    message.is_archived = order.is_archived
    message.total_cents = order.total_cents
    add_item = message.items.add
    for _, item_id, sku, quantity, price in order.items:
        item = add_item()
        item.id, item.sku, item.quantity, item.unit_price_cents = item_id, sku, quantity, price
    _set_time(message.created_at, order.created_us)
    _set_time(message.updated_at, order.updated_us)


def customer_message(customer: Customer) -> pb.Customer:
    message = pb.Customer()
    _fill_customer(message, customer)
    return message


def customers_page(page: Page[Customer]) -> pb.ListCustomersResponse:
    response = pb.ListCustomersResponse(next_page_token=page.next_page_token)
    add = response.customers.add
    for customer in page.items:
        _fill_customer(add(), customer)
    return response


def order_message(order: Order) -> pb.Order:
    message = pb.Order()
    _fill_order(message, order)
    return message


def orders_page(page: Page[Order]) -> pb.ListOrdersResponse:
    response = pb.ListOrdersResponse(next_page_token=page.next_page_token)
    add = response.orders.add
    for order in page.items:
        _fill_order(add(), order)
    return response


def summary_message(rows: list[SummaryRow]) -> pb.GetSummaryResponse:
    response = pb.GetSummaryResponse()
    add = response.customers.add
    for customer_id, email, order_count, total_cents in rows:
        row = add()
        row.customer_id, row.email = customer_id, email
        row.order_count, row.total_cents = order_count, total_cents
    return response


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


_EVENT_TYPES: dict[str, pb.OrderEvent.Type.ValueType] = {
    "CREATED": pb.OrderEvent.CREATED,
    "PAID": pb.OrderEvent.PAID,
    "SHIPPED": pb.OrderEvent.SHIPPED,
    "CANCELLED": pb.OrderEvent.CANCELLED,
    "ARCHIVED": pb.OrderEvent.ARCHIVED,
}


def event_message(event: EventRow | None, cursor: str) -> pb.OrderEvent:
    """An outbox event, or a heartbeat (None) stamped with the time it is sent."""
    message = pb.OrderEvent(cursor=cursor)
    if event is None:
        message.type = pb.OrderEvent.HEARTBEAT
        message.time.GetCurrentTime()
        return message
    message.type = _EVENT_TYPES[event.type]
    _fill_order(message.order, event.order)
    _set_time(message.time, event.time_us)
    return message
