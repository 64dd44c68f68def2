"""Order events for watchers: cursors, the per-process hub that follows the outbox, retention.

One hub per server process follows the outbox (storage/events.py) in a thread of its own:
woken by PostgreSQL's NOTIFY where a LISTEN connection is possible, else by polling at
ORDERS_EVENT_POLL_SECONDS. It keeps the newest events in memory, so that any number of
watchers costs the database one read per batch of new events, not one per watcher. A watcher
whose cursor is older than that memory replays from the table, then joins it: positions are
committed in order (storage/events.py), so "every event after n" read at any moment is final
below the head it saw, and the hand-over leaves no gap and repeats nothing.

Every replica follows the same table, and a cursor is a position in it: a watcher may resume on
any replica.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ..storage import events as outbox
from ..storage.database import Database
from .errors import FailedPrecondition, ResourceExhausted, Unavailable
from .validation import Violations

__all__ = ["EventHub", "decode_cursor", "encode_cursor"]

log = logging.getLogger("orders.events")

# Events held in memory for the watchers that keep up; an older cursor replays from the table.
_BUFFER = 10_000
# Events read from the table, or sent to a watcher, at a time.
_BATCH = 500
# Rows retention deletes in one transaction: short transactions, never a long lock.
_PRUNE_BATCH = 500
_PRUNE_EVERY_SECONDS = 60.0

Delivery = tuple[outbox.EventRow | None, str]  # an event (None: a heartbeat) and its cursor


def _fingerprint(customer_id: int) -> str:
    return hashlib.sha256(f"events:customer_id={customer_id}".encode()).hexdigest()[:16]


def encode_cursor(position: int, customer_id: int) -> str:
    """Opaque to callers: a position in the outbox, bound to the filter it was issued for."""
    raw = json.dumps({"e": position, "f": _fingerprint(customer_id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


_RESTART = "; start again with an empty `after` (only new events) and catch up from the orders"


def decode_cursor(cursor: str, customer_id: int, violations: Violations) -> int | None:
    """The position to continue after, or None (an empty cursor, or a bad one: then a
    violation of `after` says which)."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        position = data["e"]
        fingerprint = data["f"]
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        violations.add("after", "is not a cursor this service issued" + _RESTART)
        return None
    if fingerprint != _fingerprint(customer_id):
        violations.add(
            "after",
            "was issued for another customer_id filter; send it with the filter it came with"
            + _RESTART,
        )
        return None
    return position


class EventHub:
    def __init__(
        self,
        database: Database,
        *,
        poll_seconds: float,
        heartbeat_seconds: float,
        retention: timedelta,
        max_watchers: int,
        listen: bool,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`listen`: wake on PostgreSQL's NOTIFY (a connection of the hub's own that keeps its
        LISTEN, which a pooler in transaction mode cannot give); else poll."""
        self._db = database
        self._poll = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._retention = retention
        self.max_watchers = max_watchers
        self._listen = listen and database.is_postgresql
        self._clock = clock
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._watchers = 0
        # The memory: every event with a position in (floor, head], in order. None while no
        # watcher needs it (the pump then reads nothing but retention's work).
        self._floor: int | None = None
        self._head: int | None = None
        self._positions: list[int] = []
        self._events: list[outbox.EventRow] = []
        self._threads: list[threading.Thread] = []
        self._head_lock = threading.Lock()
        self._last_head: tuple[float, tuple[int, int]] | None = None
        self._next_prune = 0.0

    # Life cycle

    def start(self) -> None:
        self._spawn(self._pump, "events-pump")
        if self._listen:
            self._spawn(self._listener, "events-listen")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self, wait: float = 5.0) -> None:
        """Ends every watcher's stream (UNAVAILABLE: resume elsewhere) and the hub's threads."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._wake.set()
        # The pump may be amid a database call, which must end before the engine is disposed;
        # the listener holds only a connection of its own, closed with the process.
        for thread in self._threads[:1]:
            thread.join(wait)

    def notify(self) -> None:
        """Wakes the watchers to look at their state (one was cancelled)."""
        with self._lock:
            self._lock.notify_all()

    # Watching

    def watch(
        self, customer_id: int, cursor: str, cancelled: threading.Event
    ) -> Iterator[Delivery]:
        """The events after `cursor` of one customer (0: all), replayed then live, with a
        heartbeat (None) when nothing was sent for heartbeat_seconds; until `cancelled` is set
        or the hub closes (Unavailable)."""
        violations = Violations()
        if customer_id < 0:
            violations.add("customer_id", f"must not be negative, got {customer_id}")
        after = decode_cursor(cursor, max(customer_id, 0), violations)
        violations.raise_if_any()
        with self._lock:
            if self._closed:
                raise _shutting_down()
            if self._watchers >= self.max_watchers:
                raise ResourceExhausted(
                    f"{self.max_watchers} streams already watch this server's events; try"
                    " another replica or later (ORDERS_MAX_WATCHERS)",
                    reason="WATCHER_LIMIT",
                )
            self._watchers += 1
        self._wake.set()  # the pump follows the outbox while anyone watches
        try:
            yield from self._deliveries(customer_id or None, after, cancelled)
        finally:
            with self._lock:
                self._watchers -= 1

    def _deliveries(
        self, customer_id: int | None, after: int | None, cancelled: threading.Event
    ) -> Iterator[Delivery]:
        key = customer_id or 0
        head, pruned = self._current_head()
        if after is None:
            after = head  # from now on: what commits after this call began
        else:
            _check_kept(after, pruned)
        last_sent = time.monotonic()
        while not cancelled.is_set():
            beat_at = last_sent + self.heartbeat_seconds
            events, upto = self._from_memory(after, customer_id, beat_at, cancelled)
            if events is None:  # behind the memory: from the table, up to where it starts
                events, upto = self._replay(after, upto, customer_id)
            for event in events:
                yield event, encode_cursor(event.position, key)
            after = max(after, upto)
            now = time.monotonic()
            if events:
                last_sent = now
            elif now >= beat_at and not cancelled.is_set():
                yield None, encode_cursor(after, key)
                last_sent = now

    def _current_head(self) -> tuple[int, int]:
        """outbox.head, read after this call began; watchers starting together share one
        read (and one connection) rather than each taking one."""
        asked = time.monotonic()
        with self._head_lock:
            if self._last_head is not None and self._last_head[0] >= asked:
                return self._last_head[1]
            started = time.monotonic()
            with self._db.read() as rows:
                found = outbox.head(rows)
            self._last_head = (started, found)
            return found

    def _replay(
        self, after: int, upto: int, customer_id: int | None
    ) -> tuple[list[outbox.EventRow], int]:
        with self._db.read() as rows:
            events = outbox.read_after(rows, after, upto, _BATCH, customer_id)
            _check_kept(after, outbox.pruned_through(rows))
        if len(events) == _BATCH:
            upto = events[-1].position
        return events, upto

    def _from_memory(
        self, after: int, customer_id: int | None, until: float, cancelled: threading.Event
    ) -> tuple[list[outbox.EventRow] | None, int]:
        """Events after `after` from memory, waiting for some until `until`: (events, the
        position the caller has now seen up to); (None, floor) when `after` is older than the
        memory."""
        with self._lock:
            while True:
                if self._closed:
                    raise _shutting_down()
                if cancelled.is_set():
                    return [], after
                floor, head = self._floor, self._head
                if floor is not None and head is not None:
                    if after < floor:
                        return None, floor
                    if head > after:
                        return self._slice(after, head, customer_id)
                left = until - time.monotonic()
                if left <= 0:
                    return [], after
                self._lock.wait(left)

    def _slice(
        self, after: int, head: int, customer_id: int | None
    ) -> tuple[list[outbox.EventRow], int]:
        start = bisect.bisect_right(self._positions, after)
        found: list[outbox.EventRow] = []
        for event in self._events[start:]:
            if customer_id is None or event.customer_id == customer_id:
                found.append(event)
                if len(found) == _BATCH:
                    return found, event.position
        return found, head

    # The pump: follows the outbox while anyone watches, and prunes it

    def _pump(self) -> None:
        while not self._closed:
            try:
                watched = self._watchers > 0
                if watched:
                    self._follow()
                else:
                    with self._lock:  # nobody needs the memory: let it go
                        self._floor = self._head = None
                        self._positions, self._events = [], []
                self._prune_if_due()
            except Exception as error:  # the database away for a while: try again later
                log.warning("following the order events failed: %s", error)
                time.sleep(min(1.0, self.heartbeat_seconds))
            wait = self._poll if (self._watchers and not self._listen) else self.heartbeat_seconds
            self._wake.wait(wait)
            self._wake.clear()

    def _follow(self) -> None:
        if self._head is None:
            with self._db.read() as rows:
                head, _ = outbox.head(rows)
            with self._lock:
                self._floor = self._head = head
                self._lock.notify_all()
        while not self._closed:
            assert self._head is not None
            with self._db.read() as rows:
                fresh = outbox.read_after(rows, self._head, 2**62, _BATCH)
            if not fresh:
                return
            with self._lock:
                self._positions.extend(event.position for event in fresh)
                self._events.extend(fresh)
                self._head = fresh[-1].position
                if len(self._events) > _BUFFER:
                    cut = len(self._events) - _BUFFER // 2
                    self._floor = self._positions[cut - 1]
                    del self._positions[:cut], self._events[:cut]
                self._lock.notify_all()
            if len(fresh) < _BATCH:
                return

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        every = min(_PRUNE_EVERY_SECONDS, max(self._retention.total_seconds() / 2, 0.05))
        self._next_prune = now + every
        cutoff = self._clock() - self._retention
        while not self._closed:
            with self._db.write() as session:
                deleted = outbox.prune(session, cutoff, _PRUNE_BATCH)
            if deleted < _PRUNE_BATCH:
                return

    def _listener(self) -> None:
        outbox.listen(self._db, self._wake.set, lambda: self._closed)

    def stats(self) -> dict[str, Any]:
        return {"watchers": self._watchers, "head": self._head, "floor": self._floor}


def _check_kept(after: int, pruned: int) -> None:
    if after < pruned:
        raise FailedPrecondition(
            "the cursor in `after` is older than the oldest kept event (events are kept for"
            " ORDERS_EVENT_RETENTION)" + _RESTART,
            reason="CURSOR_EXPIRED",
        )


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; resume from the last cursor handled (any replica)",
        reason="SHUTTING_DOWN",
    )
