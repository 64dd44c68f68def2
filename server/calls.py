"""The call in progress: what one RPC carries through every layer below the interceptor (its
request id, its deadline, the SQL statements it ran), as one object in one ContextVar.

grpcio runs each call on a thread of its pool; a seed's worker thread runs in a copy of the
call's context, so it sees, and counts into, the same object. Nothing here imports the rest of
the server: transport sets the call, storage reads its deadline and counts its statements.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Call", "begin", "current", "end", "scope"]

# PostgreSQL's statement_timeout is an int of milliseconds; a deadline beyond it (some proxies
# send "practically infinite") counts as none.
_LONGEST_SECONDS = (2**31 - 1) / 1000


class Call:
    __slots__ = ("ends", "lsn", "min_lsn", "replica", "request_id", "statements")

    def __init__(self, request_id: str | None = None, seconds: float | None = None) -> None:
        self.request_id = request_id
        # A read RPC may be answered by a read replica; a write, and all it reads, may not.
        self.replica = False
        # The WAL position the caller's last write reached (x-orders-min-lsn): a replica
        # answers only once it has replayed that far.
        self.min_lsn: int | None = None
        self.lsn: str | None = None  # where a write's commit left the primary's WAL
        # time.monotonic() at the deadline; None: unbounded.
        self.ends = (
            None if seconds is None or seconds > _LONGEST_SECONDS else time.monotonic() + seconds
        )
        self.statements = 0  # SQL statements sent, one a round trip (transaction control aside)

    def remaining(self) -> float | None:
        return None if self.ends is None else self.ends - time.monotonic()


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("orders_call", default=None)


def current() -> Call | None:
    return _current.get()


def begin(call: Call) -> contextvars.Token[Call | None]:
    return _current.set(call)


def end(token: contextvars.Token[Call | None]) -> None:
    _current.reset(token)


@contextmanager
def scope(request_id: str | None = None, seconds: float | None = None) -> Iterator[Call]:
    """A call of its own for work outside an RPC (commands, tests)."""
    call = Call(request_id, seconds)
    token = begin(call)
    try:
        yield call
    finally:
        end(token)
