"""The method table of orders.v1.OrdersService: for each RPC, the right a caller's token must
grant, whether a client may send it again after UNAVAILABLE, and the HTTP status its success
has through the REST gateway.

Each of these facts is stated here once and read by everything that acts on it: the server's
access policy (server/transport/app.py), the client's retry config and bearer tokens
(channel.py), the OpenAPI generator (scripts/openapi.py) and the tests. The module lives in the
client package because the client never imports the server, while the server may read this one
module: it needs nothing beyond the standard library. Which RPCs exist is the protos' to say;
tests/test_methods.py fails when the service has a method this table lacks, and until then
the server lets only the admin token call such a method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

__all__ = ["METHODS", "SERVICE", "Access", "Method"]

SERVICE = "orders.v1.OrdersService"


class Access(Enum):
    """What a caller's token must grant: `read` and `write` are the rights an API token is
    given (ORDERS_API_TOKENS); only the admin token (ORDERS_ADMIN_TOKEN) grants `admin`."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class Method:
    name: str
    access: Access
    # Retried by the gRPC core after UNAVAILABLE (the client's service config): only where a
    # second attempt cannot do twice what the first may already have done.
    retryable: bool
    # What Envoy answers for a success: 200 unless the server asks otherwise (x-http-code).
    http_status: int = 200

    @property
    def path(self) -> str:
        """The method's gRPC path, as interceptors see it."""
        return f"/{SERVICE}/{self.name}"

    @property
    def admin_only(self) -> bool:
        return self.access is Access.ADMIN

    @property
    def creates(self) -> bool:
        """A create answers 201 Created, and takes an Idempotency-Key."""
        return self.http_status == 201


def _table(*methods: Method) -> Mapping[str, Method]:
    return MappingProxyType({method.name: method for method in methods})


# In the protos' order, which is also the order of the client's service config.
METHODS = _table(
    # Creates are not retried: the server answers UNAVAILABLE when its database drops, possibly
    # after a commit, so a second CreateOrder could make a second order and a second
    # CreateCustomer would answer ALREADY_EXISTS for a customer that was in fact created.
    Method("CreateCustomer", Access.WRITE, retryable=False, http_status=201),
    Method("GetCustomer", Access.READ, retryable=True),
    Method("ListCustomers", Access.READ, retryable=True),
    Method("CreateOrder", Access.WRITE, retryable=False, http_status=201),
    Method("GetOrder", Access.READ, retryable=True),
    Method("ListOrders", Access.READ, retryable=True),
    # A transition the order already made succeeds unchanged when repeated (the contract), so
    # sending one again is safe.
    Method("PayOrder", Access.WRITE, retryable=True),
    Method("ShipOrder", Access.WRITE, retryable=True),
    Method("CancelOrder", Access.WRITE, retryable=True),
    Method("ArchiveOrder", Access.WRITE, retryable=True),
    Method("GetSummary", Access.READ, retryable=True),
    # A seed is all or nothing, and gRPC retries a streaming call only until its first response
    # arrives (it commits to the attempt then): a retried seed never repeats rows.
    Method("Seed", Access.ADMIN, retryable=True),
    # A watch is resumed by its caller, not resent by the channel: it ends UNAVAILABLE when the
    # server stops, long after gRPC committed to the attempt (at its first event), and must go
    # on from the last cursor the caller handled (`after`), which only the caller knows.
    Method("WatchOrders", Access.READ, retryable=False),
)
