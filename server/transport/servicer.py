"""orders.v1.OrdersService: requests in, domain calls, responses out. No SQL, no rules."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import grpc
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc

from orders_client.methods import METHODS

from .. import calls
from ..domain.book import OrderBook
from ..domain.events import EventHub
from ..domain.lifecycle import Action
from ..domain.records import IdempotencyKey
from ..domain.seeding import Phase, Progress
from ..domain.validation import Violations
from ..observability import SEED_ROWS, SEED_ROWS_PER_SECOND
from . import convert
from .interceptor import metadata_value

__all__ = ["OrdersServicer"]


def _success_status(method: str) -> tuple[tuple[str, str], ...]:
    """The method table's HTTP status for a success, which Envoy's Lua filter makes the
    response's. Sent as trailing metadata, not initial: grpcio sends it with the response and
    the status in one batch, whereas initial metadata sent by the handler leaves at once.
    Envoy retries nothing once a response has begun, so a replica killed between the two would
    cost the caller a 503 for a create that had committed."""
    return (("x-http-code", str(METHODS[method].http_status)),)


# The latest events' messages kept for the watchers that follow them.
_EVENT_MESSAGES = 4096
_CUSTOMER_CREATED = _success_status("CreateCustomer")
_ORDER_CREATED = _success_status("CreateOrder")


def _count_seed(progress: Progress) -> None:
    SEED_ROWS.labels("customers").inc(progress.customers_done)
    SEED_ROWS.labels("orders").inc(progress.orders_done)
    SEED_ROWS.labels("order_items").inc(progress.items_done)
    rows = progress.customers_done + progress.orders_done + progress.items_done
    SEED_ROWS_PER_SECOND.set(rows / max(progress.elapsed_seconds, 1e-6))


def _idempotency(
    context: grpc.ServicerContext,
    method: str,
    request: pb.CreateCustomerRequest | pb.CreateOrderRequest,
) -> IdempotencyKey | None:
    """The `idempotency-key` header (REST) or metadata (gRPC) of a create, if any."""
    key = metadata_value(context, "idempotency-key")
    if key is None:
        return None
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return IdempotencyKey(key, method, digest)


def _request_id() -> str | None:
    call = calls.current()
    return None if call is None else call.request_id


class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    def __init__(self, book: OrderBook, events: EventHub) -> None:
        self._book = book
        self._events = events
        self._event_messages: dict[str, pb.OrderEvent] = {}

    def CreateCustomer(
        self, request: pb.CreateCustomerRequest, context: grpc.ServicerContext
    ) -> pb.Customer:
        customer = self._book.create_customer(
            request.email, request.name, _idempotency(context, "CreateCustomer", request)
        )
        context.set_trailing_metadata(_CUSTOMER_CREATED)
        return convert.customer_message(customer)

    def GetCustomer(
        self, request: pb.GetCustomerRequest, context: grpc.ServicerContext
    ) -> pb.Customer:
        return convert.customer_message(self._book.get_customer(request.id))

    def ListCustomers(
        self, request: pb.ListCustomersRequest, context: grpc.ServicerContext
    ) -> pb.ListCustomersResponse:
        return convert.customers_page(
            self._book.list_customers(request.page_size, request.page_token)
        )

    def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.ServicerContext
    ) -> pb.Order:
        order = self._book.create_order(
            request.customer_id,
            convert.new_items(list(request.items)),
            _idempotency(context, "CreateOrder", request),
        )
        context.set_trailing_metadata(_ORDER_CREATED)
        return convert.order_message(order)

    def GetOrder(self, request: pb.GetOrderRequest, context: grpc.ServicerContext) -> pb.Order:
        return convert.order_message(self._book.get_order(request.id))

    def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.ServicerContext
    ) -> pb.ListOrdersResponse:
        violations = Violations()
        filters = convert.order_filter(request, violations)
        page = self._book.list_orders(filters, request.page_size, request.page_token, violations)
        return convert.orders_page(page)

    def PayOrder(self, request: pb.PayOrderRequest, context: grpc.ServicerContext) -> pb.Order:
        return convert.order_message(self._book.change_status(request.id, Action.PAY))

    def ShipOrder(self, request: pb.ShipOrderRequest, context: grpc.ServicerContext) -> pb.Order:
        return convert.order_message(self._book.change_status(request.id, Action.SHIP))

    def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.ServicerContext
    ) -> pb.Order:
        return convert.order_message(self._book.change_status(request.id, Action.CANCEL))

    def ArchiveOrder(
        self, request: pb.ArchiveOrderRequest, context: grpc.ServicerContext
    ) -> pb.Order:
        return convert.order_message(self._book.archive_order(request.id))

    def GetSummary(
        self, request: pb.GetSummaryRequest, context: grpc.ServicerContext
    ) -> pb.GetSummaryResponse:
        return convert.summary_message(self._book.summary(request.limit))

    def Seed(
        self, request: pb.SeedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SeedResponse]:
        run = self._book.start_seed(
            request.customers, request.orders_per_customer, request.items_per_order
        )
        # A cancelled call or a dropped client stops the load, which then rolls back.
        context.add_callback(lambda: run.cancel(wait=0))
        try:
            for progress in run.reports():
                if not context.is_active():
                    return
                if progress.phase == Phase.DONE:
                    _count_seed(progress)
                yield convert.seed_message(progress, _request_id())
                if progress.error is not None:
                    raise progress.error
        finally:
            run.cancel()

    def WatchOrders(
        self, request: pb.WatchOrdersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.OrderEvent]:
        cancelled = threading.Event()

        def gone() -> None:  # the client went away: free its thread now, not at the next beat
            cancelled.set()
            self._events.notify()

        context.add_callback(gone)
        built = self._event_messages
        for event, cursor in self._events.watch(request.customer_id, request.after, cancelled):
            if event is None:
                yield convert.event_message(None, cursor)
                continue
            # Watchers of the same filter get the same message: built once, not once each
            # (a cursor names the event and the filter).
            message = built.get(cursor)
            if message is None:
                if len(built) >= _EVENT_MESSAGES:
                    built.clear()
                message = built[cursor] = convert.event_message(event, cursor)
            yield message
