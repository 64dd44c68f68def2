"""The floor of the REST comparison: a grpcio server that does no work at all, behind the
project's own Envoy.

`python -m bench.bare SOCKET FOLDER` serves orders.v1.OrdersService's GetCustomer, ListOrders
and GetSummary on the Unix socket SOCKET, one process, no interceptor, no database: each
answer is the bytes of a real answer of our server, read once from FOLDER (written by
`capture`), sent as they are. What a REST read through Envoy costs with this server behind it is
the least any Python gRPC server could make it cost here: the transcoding, the hop, grpcio's own
work. The Django service's p50 divided by it is the largest ratio the architecture allows.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .stack import ROOT, die_with_parent

__all__ = ["BareServer", "capture"]

SERVICE = "orders.v1.OrdersService"
NOBODY_ANSWER = "list-nobody"  # the file of an empty page, for an email that matches nobody


def capture(address: str, folder: Path, customer_id: int, broad: str) -> None:
    """Writes the answers the bare server gives, fetched from our server at `address`: a
    customer (its id replaced by the one asked for), the summary of 50, the newest 50 PAID
    orders, the same with the `broad` email filter, and an empty page."""
    folder.mkdir(parents=True, exist_ok=True)
    paid = pb.Order.Status.Value("PAID")
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = pb_grpc.OrdersServiceStub(channel)
        answers = {
            "customer": stub.GetCustomer(pb.GetCustomerRequest(id=customer_id)),
            "summary": stub.GetSummary(pb.GetSummaryRequest(limit=50)),
            "list": stub.ListOrders(pb.ListOrdersRequest(status=paid, page_size=50)),
            "list-broad": stub.ListOrders(
                pb.ListOrdersRequest(status=paid, page_size=50, email=broad)
            ),
            NOBODY_ANSWER: pb.ListOrdersResponse(),
        }
    for name, message in answers.items():
        (folder / name).write_bytes(message.SerializeToString())


def _handler(folder: Path) -> grpc.GenericRpcHandler:
    customer = pb.Customer.FromString((folder / "customer").read_bytes())
    customer.ClearField("id")
    rest_of_customer = customer.SerializeToString()
    summary = (folder / "summary").read_bytes()
    page = (folder / "list").read_bytes()
    broad = (folder / "list-broad").read_bytes()
    nobody = (folder / NOBODY_ANSWER).read_bytes()

    def get_customer(request: pb.GetCustomerRequest, _context: object) -> bytes:
        # The id asked for (field 1, a varint; a parser takes fields in any order) before the
        # rest of a real customer: the one part of the answer the REST check looks into.
        return b"\x08" + _varint(request.id) + rest_of_customer

    # Any substring of the broad page's emails (the bench's broad filter) answers that page.
    broad_emails = _Substrings(
        {order.customer.email for order in pb.ListOrdersResponse.FromString(broad).orders}
    )

    def list_orders(request: pb.ListOrdersRequest, _context: object) -> bytes:
        if not request.email:
            return page
        return broad if request.email in broad_emails else nobody

    def get_summary(_request: object, _context: object) -> bytes:
        return summary

    methods: dict[str, tuple[Callable[[Any, Any], bytes], Callable[[bytes], Any] | None]] = {
        "GetCustomer": (get_customer, pb.GetCustomerRequest.FromString),
        "ListOrders": (list_orders, pb.ListOrdersRequest.FromString),
        "GetSummary": (get_summary, None),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(call, request_deserializer=parse)
            for name, (call, parse) in methods.items()
        },
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Substrings:
    def __init__(self, emails: set[str]) -> None:
        self.emails = emails

    def __contains__(self, needle: object) -> bool:
        return isinstance(needle, str) and any(needle in email for email in self.emails)


class BareServer:
    """`python -m bench.bare` in a process of its own, serving the answers in `folder`."""

    def __init__(self, folder: Path, log: IO[bytes]) -> None:
        self.socket = str(folder / "bare.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare", self.socket, str(folder)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            with grpc.insecure_channel(f"unix:{self.socket}") as channel:
                # grpc_health types its messages, not its generated stub: mypy cannot see Check.
                health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(service=SERVICE), wait_for_ready=True, timeout=20
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def serve(socket: str, folder: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handler(folder),))
    checks = health.HealthServicer()
    checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]))
