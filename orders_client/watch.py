"""WatchOrders as an iterator that survives the end of a replica: a stream cut by UNAVAILABLE (a
server stopping, a lost connection) is opened again from the last cursor received, so the
caller sees every event once, in order, whichever replica sends it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from orders.v1 import orders_pb2 as pb

from .errors import OrdersError

__all__ = ["EventWatch"]

HEARTBEAT = pb.OrderEvent.HEARTBEAT


class EventWatch(Iterator[pb.OrderEvent]):
    """The events of one WatchOrders, as they come. `cursor` is where the caller stands (the
    last event's or heartbeat's cursor): what to pass as `after` to go on later. Heartbeats
    are yielded only when asked for. After UNAVAILABLE the stream is reopened from `cursor`,
    waiting a little longer each time, until it has failed for `give_up_after` seconds in a
    row; any other error is raised as OrdersError. `cancel()` ends it (StopIteration)."""

    def __init__(
        self,
        stub: Any,
        customer_id: int = 0,
        after: str = "",
        *,
        heartbeats: bool = False,
        resume: bool = True,
        give_up_after: float = 60.0,
    ) -> None:
        self._stub = stub
        self.customer_id = customer_id
        self.cursor = after
        self.resumes = 0  # how many times the stream was opened again
        self._heartbeats = heartbeats
        self._resume = resume
        self._give_up_after = give_up_after
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None

    def __iter__(self) -> EventWatch:
        return self

    def __next__(self) -> pb.OrderEvent:
        failing_since: float | None = None
        pause = 0.05
        while not self._cancelled.is_set():
            call = self._open()
            try:
                message: pb.OrderEvent = next(call)
            except StopIteration:
                raise OrdersError(
                    grpc.StatusCode.UNAVAILABLE, "the stream ended without a status"
                ) from None
            except grpc.RpcError as error:
                self._call = None
                if self._cancelled.is_set():
                    break
                if not self._resume or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise OrdersError.from_rpc_error(error) from error
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since > self._give_up_after:
                    raise OrdersError.from_rpc_error(error) from error
                self._cancelled.wait(pause)
                pause = min(pause * 2, 2.0)
                self.resumes += 1
                continue
            failing_since, pause = None, 0.05
            self.cursor = message.cursor
            if message.type != HEARTBEAT or self._heartbeats:
                return message
        raise StopIteration

    def _open(self) -> Any:
        with self._lock:
            if self._call is None:
                request = pb.WatchOrdersRequest(after=self.cursor, customer_id=self.customer_id)
                self._call = self._stub.WatchOrders(request)
            return self._call

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
