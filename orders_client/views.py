"""What the CLI prints: rich tables for people, proto3 JSON for scripts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from orders.v1 import orders_pb2 as pb
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "customer_table",
    "customers_table",
    "event_line",
    "money",
    "order_view",
    "orders_table",
    "print_json",
    "status_name",
    "summary_table",
    "to_json",
    "when",
]


def to_json(message: Message, *, indent: int | None = 2) -> str:
    """The proto3 JSON mapping, as the REST gateway renders it: field names as in the proto,
    defaults printed, enums by name, int64 as strings."""
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=indent,
    )


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole:,}.{part:02d}"


def when(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_name(status: pb.Order.Status.ValueType) -> str:
    return pb.Order.Status.Name(status)


_STATUS_STYLE = {
    pb.Order.DRAFT: "yellow",
    pb.Order.PAID: "green",
    pb.Order.SHIPPED: "blue",
    pb.Order.CANCELLED: "red",
}


def _status(order: pb.Order) -> Text:
    text = Text(status_name(order.status), style=_STATUS_STYLE.get(order.status, ""))
    if order.is_archived:
        text.append(" (archived)", style="dim")
    return text


def event_line(event: pb.OrderEvent) -> Text:
    """One order event as a line: when, what, which order of which customer, its status and
    total after the change."""
    order = event.order
    line = Text(f"{when(event.time)}  ")
    line.append(f"{pb.OrderEvent.Type.Name(event.type):<9}", style="bold")
    line.append(f"  order {order.id}  customer {order.customer_id} ({order.customer.email})  ")
    line.append(_status(order))
    line.append(f"  {money(order.total_cents)}")
    return line


def _table(title: str | None, *columns: str, right: Iterable[str] = ()) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    aligned_right = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned_right else "left")
    return table


def orders_table(orders: Iterable[pb.Order], title: str | None = None) -> Table:
    table = _table(
        title,
        "id",
        "customer",
        "status",
        "items",
        "total",
        "created",
        right=("id", "items", "total"),
    )
    for order in orders:
        # Text, not str: rich would read "[...]" in an email or a name as markup.
        table.add_row(
            str(order.id),
            Text(f"{order.customer.email} (#{order.customer_id})"),
            _status(order),
            str(sum(i.quantity for i in order.items)),
            money(order.total_cents),
            when(order.created_at),
        )
    return table


def order_view(order: pb.Order) -> Table:
    """One order: its fields, then its items."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("order", str(order.id))
    grid.add_row("status", _status(order))
    grid.add_row(
        "customer", Text(f"#{order.customer_id} {order.customer.email} ({order.customer.name})")
    )
    grid.add_row("total", money(order.total_cents))
    grid.add_row("created", when(order.created_at))
    grid.add_row("updated", when(order.updated_at))
    items = _table(
        None, "sku", "quantity", "unit price", "line", right=("quantity", "unit price", "line")
    )
    for line in order.items:
        items.add_row(
            Text(line.sku),
            str(line.quantity),
            money(line.unit_price_cents),
            money(line.quantity * line.unit_price_cents),
        )
    grid.add_row("items", items if order.items else Text("none", style="dim"))
    return grid


def customers_table(customers: Iterable[pb.Customer], title: str | None = None) -> Table:
    table = _table(title, "id", "email", "name", "created", right=("id",))
    for customer in customers:
        table.add_row(
            str(customer.id), Text(customer.email), Text(customer.name), when(customer.created_at)
        )
    return table


def customer_table(customer: pb.Customer) -> Table:
    return customers_table([customer])


def summary_table(rows: Iterable[pb.CustomerSummary]) -> Table:
    table = _table(
        "Customers by PAID, non-archived total",
        "rank",
        "customer",
        "email",
        "paid orders",
        "total",
        right=("rank", "customer", "paid orders", "total"),
    )
    for rank, row in enumerate(rows, start=1):
        table.add_row(
            str(rank),
            str(row.customer_id),
            Text(row.email),
            f"{row.order_count:,}",
            money(row.total_cents),
        )
    return table


def print_json(console: Console, message: Message) -> None:
    """JSON straight to the console's file: rich would wrap and highlight it."""
    console.file.write(to_json(message) + "\n")
    console.file.flush()
