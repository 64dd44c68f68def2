"""The outbox of order events: written inside the transactions that change orders, read by the
event hub (domain/events.py) and by watchers replaying from a cursor.

Positions are handed out in commit order, so the committed events are always a prefix of the
positions (up to gaps of transactions that failed): PostgreSQL inserts take one advisory lock
for the rest of their transaction, first thing in the insert, so no transaction takes a
position while another one holding an earlier position has yet to commit; SQLite's writers
commit one at a time anyway. Reading "everything after n" therefore never skips an event that
commits later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.orm import Session

from ..domain.records import Order
from .database import Database, Rows, Sql

__all__ = [
    "NOTIFY_CHANNEL",
    "EventRow",
    "head",
    "insert_event",
    "listen",
    "prune",
    "pruned_through",
    "read_after",
]

log = logging.getLogger("orders.events")

# What PostgreSQL listeners of new events LISTEN to; a write's NOTIFY is sent at its commit.
NOTIFY_CHANNEL = "orders_events"
# The advisory lock that orders the inserts ("ordersev" as a number: any constant other code
# of this database does not use).
_ORDER_LOCK = 0x6F72646572736576

# Typed, so that SQLite stores the time as SQLAlchemy stores every other timestamp there.
_TIME = DateTime(timezone=True)
_INSERT_POSTGRESQL = text(
    "WITH ordered AS MATERIALIZED"
    f" (SELECT pg_advisory_xact_lock({_ORDER_LOCK}), pg_notify('{NOTIFY_CHANNEL}', ''))"
    " INSERT INTO order_events (type, order_id, customer_id, created_at, payload)"
    " SELECT :type, :order_id, :customer_id, :created_at, :payload FROM ordered"
).bindparams(bindparam("created_at", type_=_TIME))
_INSERT_SQLITE = text(
    "INSERT INTO order_events (type, order_id, customer_id, created_at, payload)"
    " VALUES (:type, :order_id, :customer_id, :created_at, :payload)"
).bindparams(bindparam("created_at", type_=_TIME))


@dataclass(frozen=True, slots=True)
class EventRow:
    position: int
    type: str
    customer_id: int
    time_us: int
    order: Order


def insert_event(session: Session, event_type: str, order: Order, now: datetime) -> None:
    """Records `order` (as the change left it) in the change's own transaction. Last in the
    transaction: on PostgreSQL the ordering lock is held from here to the commit."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    session.execute(
        _INSERT_POSTGRESQL if postgresql else _INSERT_SQLITE,
        {
            "type": event_type,
            "order_id": order.id,
            "customer_id": order.customer_id,
            "created_at": now,
            "payload": json.dumps(order, separators=(",", ":")),
        },
    )


_COLUMNS = "position, type, customer_id, $us(created_at), payload FROM order_events"
_AFTER = Sql(
    f"SELECT {_COLUMNS} WHERE position > :after AND position <= :upto"
    " ORDER BY position LIMIT :limit"
)
_AFTER_OF_CUSTOMER = Sql(
    f"SELECT {_COLUMNS} WHERE customer_id = :customer_id AND position > :after"
    " AND position <= :upto ORDER BY position LIMIT :limit"
)
_HEAD = Sql(
    "SELECT coalesce((SELECT max(position) FROM order_events), 0),"
    " (SELECT through FROM order_events_pruned WHERE id = 1)"
)


def _event(row: tuple[object, ...]) -> EventRow:
    position, event_type, customer_id, time_us, payload = row
    order = Order._make(json.loads(str(payload)))
    return EventRow(
        int(str(position)), str(event_type), int(str(customer_id)), int(str(time_us)), order
    )


def read_after(
    rows: Rows, after: int, upto: int, limit: int, customer_id: int | None = None
) -> list[EventRow]:
    """Up to `limit` events with positions in (after, upto], in order; one customer's only
    when `customer_id` is given."""
    params = {"after": after, "upto": upto, "limit": limit, "customer_id": customer_id}
    query = _AFTER if customer_id is None else _AFTER_OF_CUSTOMER
    return [_event(row) for row in rows.all(query, params)]


def head(rows: Rows) -> tuple[int, int]:
    """The last committed position (the last pruned one when none is kept), and the last
    position retention deleted."""
    found = rows.first(_HEAD, {})
    assert found is not None
    last, through = int(found[0]), int(found[1])
    return max(last, through), through


def pruned_through(rows: Rows) -> int:
    return head(rows)[1]


_PRUNE = text(
    "DELETE FROM order_events WHERE position IN (SELECT position FROM order_events"
    " WHERE created_at < :cutoff ORDER BY position LIMIT :batch) RETURNING position"
).bindparams(bindparam("cutoff", type_=_TIME))
_MARK_PRUNED = text(
    "UPDATE order_events_pruned SET through = CASE WHEN through < :through THEN :through"
    " ELSE through END WHERE id = 1"
)


def prune(session: Session, cutoff: datetime, batch: int) -> int:
    """Deletes up to `batch` of the oldest events written before `cutoff`, and remembers the
    last position deleted; how many it deleted."""
    deleted = [
        int(p) for p in session.execute(_PRUNE, {"cutoff": cutoff, "batch": batch}).scalars()
    ]
    if deleted:
        session.execute(_MARK_PRUNED, {"through": max(deleted)})
    return len(deleted)


def listen(database: Database, wake: Callable[[], None], stopped: Callable[[], bool]) -> None:
    """Calls `wake` on each NOTIFY of a committed event until `stopped()`, on a PostgreSQL
    connection of its own (a LISTEN lasts as long as its connection). Reconnects when the
    connection drops, and wakes then too: a notice may have been missed meanwhile."""
    conninfo = database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stopped():
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                wake()
                while not stopped():
                    for _ in connection.notifies(timeout=0.5):
                        wake()
        except psycopg.Error as error:
            log.warning("LISTEN for order events failed (polling until it is back): %s", error)
            wake()
            time.sleep(1.0)
