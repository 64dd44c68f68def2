"""A steady load of calls from a few threads, every call timed and its outcome kept, so that a
fault test can say what failed, when, how fast, and when the service came back.

A worker is a function `work(n) -> outcome` (n counts its calls); it returns a short outcome
string ("OK", a gRPC code name, "HTTP 503", ...) or raises. Loads are bounded: they stop when
asked, or at `max_seconds` whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["Call", "Load", "grpc_outcome"]


@dataclass(frozen=True)
class Call:
    worker: str
    started: float  # time.monotonic()
    ended: float
    outcome: str
    detail: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def grpc_outcome(call: Callable[[], Any]) -> tuple[str, str, Any]:
    try:
        value = call()
    except grpc.RpcError as err:
        return err.code().name, err.details() or "", None
    return "OK", "", value


@dataclass
class Load:
    workers: dict[str, Callable[[int], tuple[str, str, Any]]]
    max_seconds: float = 120.0
    pause: float = 0.0  # between two calls of one worker
    calls: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for name, work in self.workers.items():
            thread = threading.Thread(
                target=self._run, args=(name, work, deadline), name=f"load-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def _run(self, name: str, work: Callable[[int], tuple[str, str, Any]], deadline: float) -> None:
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                outcome, detail, value = work(n)
            except Exception as exc:  # recorded as a failure: the test decides what it means
                outcome, detail, value = f"EXCEPTION {type(exc).__name__}", str(exc)[:300], None
            with self._lock:
                self.calls.append(Call(name, started, time.monotonic(), outcome, detail, value))
            n += 1
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self, timeout: float = 60) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running {timeout:.0f}s after the stop: {alive}"
        return self.snapshot()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return sorted(self.calls, key=lambda c: c.started)

    def wait_for_calls(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the load made fewer than {count} calls in {timeout}s")
            time.sleep(0.02)


def between(calls: Iterable[Call], start: float, end: float) -> list[Call]:
    """The calls that started and ended within [start, end]."""
    return [c for c in calls if c.started >= start and c.ended <= end]
