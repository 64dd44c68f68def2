"""OrdersClient: one typed method per RPC of orders.v1.OrdersService, a deadline on every call,
pagers over every order and every customer, the Seed stream as an iterator, and order events
as an iterator that resumes by itself (watch.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeAlias, TypedDict, TypeVar, Unpack

import grpc
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .channel import DEFAULT_RETRY, RetryPolicy, open_channel, resolve_target
from .errors import OrdersError
from .watch import EventWatch

__all__ = ["Deadlines", "OrderFilters", "OrdersClient", "SeedStream", "StatusArg", "parse_status"]

# Read-your-writes behind a read replica: a write's trailing metadata says where its commit
# left the primary's WAL; a read that sends the furthest such position back is answered by a
# replica only once it has replayed that far, else by the primary.
LSN_TRAILER = "x-orders-lsn"
MIN_LSN_HEADER = "x-orders-min-lsn"

# An Order.Status value, its name in any case, or None for any status.
StatusArg: TypeAlias = pb.Order.Status.ValueType | str | None


class OrderFilters(TypedDict, total=False):
    """The filters of ListOrders; each left out matches every order."""

    status: StatusArg  # one status; None or STATUS_UNSPECIFIED for any
    email: str  # case-insensitive substring of the customer's email
    customer_id: int  # 0 for any
    include_archived: bool  # archived orders are left out unless True


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class Deadlines:
    """Seconds a call may take, retries included, when the caller names no timeout."""

    unary: float = 10.0
    # A seed of the largest allowed size (5,000,000 rows by default) takes minutes, not hours.
    seed: float = 3600.0


def parse_status(status: StatusArg) -> pb.Order.Status.ValueType:
    """An Order.Status from its value or its name in any case (`paid`, `PAID`); None -> any."""
    if status is None:
        return pb.Order.STATUS_UNSPECIFIED
    if isinstance(status, str):
        name = status.strip().upper()
        try:
            return pb.Order.Status.Value(name)
        except ValueError:
            known = ", ".join(n for n in pb.Order.Status.keys() if n != "STATUS_UNSPECIFIED")
            raise ValueError(f"unknown order status {status!r}; one of {known}") from None
    return status


class SeedStream(Iterator[pb.SeedResponse]):
    """The progress messages of one seed, as they arrive. The last one has `done` set; a seed
    that fails yields its PHASE_FAILED message and then raises OrdersError. `cancel()` stops
    the seed, and the server rolls it back."""

    def __init__(self, call: grpc._CallIterator[pb.SeedResponse]) -> None:
        self._call = call

    def __iter__(self) -> SeedStream:
        return self

    def __next__(self) -> pb.SeedResponse:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            raise OrdersError.from_rpc_error(err) from err

    def cancel(self) -> None:
        self._call.cancel()


class OrdersClient:
    """A client of orders.v1.OrdersService over one channel.

    Every method raises OrdersError when the call fails. `timeout` (seconds) overrides the
    default deadline of that call."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        deadlines: Deadlines = Deadlines(),
        target: str | None = None,
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.OrdersServiceStub(channel)
        self.deadlines = deadlines
        self.target = target
        # The furthest commit position of this client's writes: its reads see every one.
        self._lsn_lock = threading.Lock()
        self._lsn: tuple[int, str] | None = None
        self._read_metadata: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        token: str | None = None,
        *,
        admin_token: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        deadlines: Deadlines = Deadlines(),
        environ: Mapping[str, str] | None = None,
    ) -> OrdersClient:
        """A client over `open_channel(...)`; see it for the environment variables it reads."""
        resolved = resolve_target(target, environ)
        channel = open_channel(
            resolved, token, admin_token=admin_token, retry=retry, environ=environ
        )
        return cls(channel, deadlines=deadlines, target=resolved)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OrdersClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def last_write_lsn(self) -> str | None:
        """Where the primary's WAL stood after this client's furthest write (None: no write
        answered with one, as without a read replica)."""
        found = self._lsn
        return None if found is None else found[1]

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        """A read: it carries this client's last write position, if any."""
        try:
            return method(
                request,
                timeout=self.deadlines.unary if timeout is None else timeout,
                metadata=self._read_metadata,
            )
        except grpc.RpcError as err:
            raise OrdersError.from_rpc_error(err) from err

    def _write(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        """A write: remembers the commit position it answers with."""
        try:
            response, call = method.with_call(
                request, timeout=self.deadlines.unary if timeout is None else timeout
            )
        except grpc.RpcError as err:
            raise OrdersError.from_rpc_error(err) from err
        for key, value in call.trailing_metadata() or ():
            if key == LSN_TRAILER:
                self._saw_lsn(str(value))
        return response

    def _saw_lsn(self, text: str) -> None:
        high, _, low = text.partition("/")
        try:
            position = (int(high, 16) << 32) + int(low, 16)
        except ValueError:
            return
        with self._lsn_lock:
            if self._lsn is None or position > self._lsn[0]:
                self._lsn = (position, text)
                self._read_metadata = ((MIN_LSN_HEADER, text),)

    # Customers.

    def create_customer(
        self, email: str, name: str, *, timeout: float | None = None
    ) -> pb.Customer:
        request = pb.CreateCustomerRequest(email=email, name=name)
        return self._write(self._stub.CreateCustomer, request, timeout)

    def get_customer(self, customer_id: int, *, timeout: float | None = None) -> pb.Customer:
        return self._call(self._stub.GetCustomer, pb.GetCustomerRequest(id=customer_id), timeout)

    def list_customers(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> pb.ListCustomersResponse:
        """One page, newest first; page_size 0 -> the server's default (50)."""
        request = pb.ListCustomersRequest(page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListCustomers, request, timeout)

    def iter_customer_pages(self, *, page_size: int = 0) -> Iterator[pb.ListCustomersResponse]:
        return _pages(lambda token: self.list_customers(page_size=page_size, page_token=token))

    def iter_customers(self, *, page_size: int = 0) -> Iterator[pb.Customer]:
        """Every customer, newest first, across every page."""
        for page in self.iter_customer_pages(page_size=page_size):
            yield from page.customers

    # Orders.

    def create_order(
        self, customer_id: int, items: Iterable[pb.OrderItem], *, timeout: float | None = None
    ) -> pb.Order:
        """A DRAFT order; the server assigns the item ids and computes total_cents."""
        request = pb.CreateOrderRequest(customer_id=customer_id, items=list(items))
        return self._write(self._stub.CreateOrder, request, timeout)

    def get_order(self, order_id: int, *, timeout: float | None = None) -> pb.Order:
        return self._call(self._stub.GetOrder, pb.GetOrderRequest(id=order_id), timeout)

    def list_orders(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        **filters: Unpack[OrderFilters],
    ) -> pb.ListOrdersResponse:
        """One page, newest first. A page_token only goes with the filters it came from."""
        request = pb.ListOrdersRequest(
            status=parse_status(filters.get("status")),
            email=filters.get("email", ""),
            customer_id=filters.get("customer_id", 0),
            include_archived=filters.get("include_archived", False),
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self._stub.ListOrders, request, timeout)

    def iter_order_pages(
        self, *, page_size: int = 0, **filters: Unpack[OrderFilters]
    ) -> Iterator[pb.ListOrdersResponse]:
        """Every page of ListOrders with these filters, fetched as the caller reaches it."""
        return _pages(
            lambda token: self.list_orders(page_size=page_size, page_token=token, **filters)
        )

    def iter_orders(
        self, *, page_size: int = 0, **filters: Unpack[OrderFilters]
    ) -> Iterator[pb.Order]:
        """Every order matching the filters, newest first, across every page."""
        for page in self.iter_order_pages(page_size=page_size, **filters):
            yield from page.orders

    def pay_order(self, order_id: int, *, timeout: float | None = None) -> pb.Order:
        return self._write(self._stub.PayOrder, pb.PayOrderRequest(id=order_id), timeout)

    def ship_order(self, order_id: int, *, timeout: float | None = None) -> pb.Order:
        return self._write(self._stub.ShipOrder, pb.ShipOrderRequest(id=order_id), timeout)

    def cancel_order(self, order_id: int, *, timeout: float | None = None) -> pb.Order:
        return self._write(self._stub.CancelOrder, pb.CancelOrderRequest(id=order_id), timeout)

    def archive_order(self, order_id: int, *, timeout: float | None = None) -> pb.Order:
        return self._write(self._stub.ArchiveOrder, pb.ArchiveOrderRequest(id=order_id), timeout)

    def get_summary(self, limit: int = 0, *, timeout: float | None = None) -> pb.GetSummaryResponse:
        """Customers by the total of their PAID, non-archived orders; limit 0 -> 10."""
        return self._call(self._stub.GetSummary, pb.GetSummaryRequest(limit=limit), timeout)

    # Seed.

    def seed(
        self,
        customers: int,
        orders_per_customer: int = 0,
        items_per_order: int = 0,
        *,
        timeout: float | None = None,
    ) -> SeedStream:
        """Starts a seed; iterate the result for its progress messages."""
        request = pb.SeedRequest(
            customers=customers,
            orders_per_customer=orders_per_customer,
            items_per_order=items_per_order,
        )
        deadline = self.deadlines.seed if timeout is None else timeout
        try:
            return SeedStream(self._stub.Seed(request, timeout=deadline))
        except grpc.RpcError as err:
            raise OrdersError.from_rpc_error(err) from err

    def watch_orders(
        self,
        customer_id: int = 0,
        after: str = "",
        *,
        heartbeats: bool = False,
        resume: bool = True,
    ) -> EventWatch:
        """Order events as they commit: those after `after` (a cursor of an earlier watch;
        empty: from now on), of one customer or all (0). Without a deadline: it ends when
        cancelled. It goes on by itself after UNAVAILABLE (a replica stopping) unless
        `resume` is False; its `cursor` is where to resume from later."""
        return EventWatch(self._stub, customer_id, after, heartbeats=heartbeats, resume=resume)


class _Page(Protocol):
    next_page_token: str


_P = TypeVar("_P", bound=_Page)


def _pages(fetch: Callable[[str], _P]) -> Iterator[_P]:
    """AIP-158: the first page, then the next while next_page_token is not empty."""
    token = ""
    while True:
        page = fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
