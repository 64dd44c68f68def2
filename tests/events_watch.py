"""A watcher of WatchOrders for the tests: the stream read in a thread of its own into a queue,
so that a test can wait for what it expects with a bound, and see what came meanwhile."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc
from orders.v1 import orders_pb2 as pb

HEARTBEAT = pb.OrderEvent.HEARTBEAT


class Watcher:
    def __init__(self, stub: Any, after: str = "", customer_id: int = 0, **kwargs: Any) -> None:
        self.call = stub.WatchOrders(
            pb.WatchOrdersRequest(after=after, customer_id=customer_id), **kwargs
        )
        self.messages: queue.Queue[pb.OrderEvent] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.cursor = after  # the last cursor received, heartbeats included
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def next(self, timeout: float = 15.0) -> pb.OrderEvent:
        message = self.messages.get(timeout=timeout)
        self.cursor = message.cursor
        return message

    def heartbeat(self, timeout: float = 15.0) -> str:
        """Waits for a heartbeat (events before it are dropped); its cursor."""
        ends = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, ends - time.monotonic()))
            if message.type == HEARTBEAT:
                return message.cursor

    def events(
        self, count: int, timeout: float = 30.0, partial: bool = False
    ) -> list[pb.OrderEvent]:
        """The next `count` events, heartbeats left out; after `timeout` seconds, fails, or
        with `partial` returns the fewer that came."""
        found: list[pb.OrderEvent] = []
        ends = time.monotonic() + timeout
        while len(found) < count:
            left = ends - time.monotonic()
            if left <= 0:
                if partial:
                    return found
                raise AssertionError(f"{len(found)} of {count} events within {timeout} s")
            try:
                message = self.next(left)
            except queue.Empty:
                if self.error is not None:
                    raise AssertionError(f"the stream ended: {self.error}") from None
                continue
            if message.type != HEARTBEAT:
                found.append(message)
        return found

    def quiet(self, seconds: float) -> list[pb.OrderEvent]:
        """Whatever events arrive within `seconds` (none, where a test expects none)."""
        found: list[pb.OrderEvent] = []
        ends = time.monotonic() + seconds
        while (left := ends - time.monotonic()) > 0:
            try:
                message = self.next(left)
            except queue.Empty:
                break
            if message.type != HEARTBEAT:
                found.append(message)
        return found

    def wait_end(self, timeout: float = 30.0) -> grpc.RpcError | None:
        assert self.ended.wait(timeout), f"the stream did not end within {timeout} s"
        return self.error

    def cancel(self) -> None:
        self.call.cancel()
        self.ended.wait(10)
