"""Seed: generated customers, orders and items, loaded in one transaction, with live progress.

The load runs in a worker thread; the caller reads progress snapshots from `SeedRun.reports()`
at a steady interval, whatever a single statement of the load is doing. Cancelling stops the
row generators, and the transaction rolls back: all or nothing.
"""

from __future__ import annotations

import contextvars
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .. import tracing
from ..storage.bulk import BulkLoader
from ..storage.database import Database
from .errors import DomainError
from .lifecycle import rollup_share
from .records import Status
from .validation import Violations

__all__ = [
    "MAX_SEED_CUSTOMERS",
    "MAX_SEED_ITEMS_PER_ORDER",
    "MAX_SEED_ORDERS_PER_CUSTOMER",
    "Phase",
    "Progress",
    "SeedPlan",
    "SeedRun",
    "item_values",
    "order_state",
    "plan_seed",
    "seed_email",
]

# The shape of one seed: how many customers, and orders and items for each. The items cap is
# the seed's own, well below the most items a created order may hold
# (validation.MAX_ITEMS_PER_ORDER): generated orders need no more to look real.
MAX_SEED_CUSTOMERS = 100_000
MAX_SEED_ORDERS_PER_CUSTOMER = 1_000
MAX_SEED_ITEMS_PER_ORDER = 100
_CHECK_EVERY = 1024


class Phase(StrEnum):
    STARTED = "STARTED"
    CUSTOMERS = "CUSTOMERS"
    ORDERS = "ORDERS"
    ITEMS = "ITEMS"
    COMMITTING = "COMMITTING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class SeedPlan:
    customers: int
    orders_per_customer: int
    items_per_order: int

    @property
    def orders(self) -> int:
        return self.customers * self.orders_per_customer

    @property
    def items(self) -> int:
        return self.orders * self.items_per_order

    @property
    def rows(self) -> int:
        return self.customers + self.orders + self.items


def plan_seed(
    customers: int, orders_per_customer: int, items_per_order: int, max_rows: int
) -> SeedPlan:
    violations = Violations()
    for field, value, low, high in (
        ("customers", customers, 1, MAX_SEED_CUSTOMERS),
        ("orders_per_customer", orders_per_customer, 0, MAX_SEED_ORDERS_PER_CUSTOMER),
        ("items_per_order", items_per_order, 0, MAX_SEED_ITEMS_PER_ORDER),
    ):
        if not low <= value <= high:
            violations.add(field, f"must be between {low:,} and {high:,}, got {value:,}")
    violations.raise_if_any()
    plan = SeedPlan(customers, orders_per_customer, items_per_order)
    if plan.rows > max_rows:
        violations.add(
            "customers",
            f"the seed would write {plan.rows:,} rows, above this server's cap of {max_rows:,} "
            "(ORDERS_SEED_MAX_ROWS)",
        )
    violations.raise_if_any()
    return plan


@dataclass(frozen=True, slots=True)
class Progress:
    phase: Phase
    customers_done: int
    customers_total: int
    orders_done: int
    orders_total: int
    items_done: int
    items_total: int
    elapsed_seconds: float
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)


class _Cancelled(Exception):
    pass


_STATUS_WHEEL = (
    (Status.DRAFT,) * 4 + (Status.PAID,) * 3 + (Status.SHIPPED,) * 2 + (Status.CANCELLED,)
)


def _mix(a: int, b: int) -> int:
    """A cheap, deterministic scramble: the same order always gets the same items."""
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    return (h * 0x2C1B3C6D) & 0xFFFFFFFF


def seed_email(customer_id: int) -> str:
    """A seeded customer's email. Ids are unique across every writer, so are these; the
    .invalid domain is refused to callers, so no real customer can take one."""
    return f"seed-{customer_id}@seed.invalid"


def item_values(order_id: int, index: int) -> tuple[str, int, int]:
    """sku, quantity, unit_price_cents of a seeded order's item `index`."""
    h = _mix(order_id, index)
    return f"SKU-{h % 1000:04d}", 1 + h % 5, 100 + (h >> 10) % 9_900


def order_state(order_id: int) -> tuple[Status, bool]:
    """status and is_archived of a seeded order: a mix of statuses, one in 20 archived."""
    h = _mix(order_id, 0xFFFF)
    return _STATUS_WHEEL[h % len(_STATUS_WHEEL)], (h >> 8) % 20 == 0


class SeedRun:
    def __init__(
        self, database: Database, plan: SeedPlan, on_finished: Callable[[], None] = lambda: None
    ) -> None:
        self._database = database
        self.plan = plan
        self._on_finished = on_finished
        self._finish_lock = threading.Lock()
        self._finish_reported = False
        self._phase = Phase.STARTED
        self._done = {"customers": 0, "orders": 0, "items": 0}
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> Progress:
        return Progress(
            phase=self._phase,
            customers_done=self._done["customers"],
            customers_total=self.plan.customers,
            orders_done=self._done["orders"],
            orders_total=self.plan.orders,
            items_done=self._done["items"],
            items_total=self.plan.items,
            elapsed_seconds=time.monotonic() - self._started,
            error=self._error,
        )

    def reports(self, interval: float = 0.5) -> Iterator[Progress]:
        """A snapshot at once, then one every `interval` seconds, then the outcome."""
        yield self.snapshot()
        # The worker shares this call's context (its statement count, its request id).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._load,), name="seed", daemon=True
        )
        self._thread.start()
        while not self._finished.wait(interval):
            progress = self.snapshot()
            # The worker sets its last phase a moment before it says it has finished: the
            # outcome is reported once, below, not also by a snapshot taken in between.
            if not progress.done:
                yield progress
        yield self.snapshot()

    def cancel(self, wait: float = 30.0) -> None:
        """Stops the load and waits until its transaction has rolled back."""
        self._cancel.set()
        if self._thread is None:
            self._report_finished()  # never started: nothing to roll back
        else:
            self._thread.join(wait)

    def _report_finished(self) -> None:
        with self._finish_lock:
            if self._finish_reported:
                return
            self._finish_reported = True
        self._on_finished()

    def _counted(self, kind: str, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        done = self._done
        cancel = self._cancel
        n = 0
        for row in rows:
            yield row
            n += 1
            if n % _CHECK_EVERY == 0:
                done[kind] += _CHECK_EVERY
                if cancel.is_set():
                    raise _Cancelled
        done[kind] += n % _CHECK_EVERY
        if cancel.is_set():
            raise _Cancelled

    def _load(self) -> None:
        # Traced: each phase a span under the write's, its statements under it.
        phases: tracing.Phases | None = None
        try:
            with self._database.write() as session:
                if tracing.tracer is not None:
                    phases = tracing.Phases()
                    phases.enter("reserve_ids")
                loader = BulkLoader(session)
                now = datetime.now(UTC)
                stamp = loader.timestamp(now)
                customer_ids = loader.reserve_ids("customers", self.plan.customers)
                order_ids = loader.reserve_ids("orders", self.plan.orders)

                self._phase = Phase.CUSTOMERS
                if phases is not None:
                    phases.enter("customers")
                loader.load(
                    "customers",
                    ("id", "email", "email_key", "name", "created_at"),
                    self._counted("customers", self._customer_rows(customer_ids, stamp)),
                )
                self._phase = Phase.ORDERS
                if phases is not None:
                    phases.enter("orders", rows=self._done["customers"])
                paid_count = array("q", bytes(8 * self.plan.customers))
                paid_total = array("q", bytes(8 * self.plan.customers))
                loader.load(
                    "orders",
                    (
                        "id",
                        "customer_id",
                        "status",
                        "is_archived",
                        "total_cents",
                        "created_at",
                        "updated_at",
                    ),
                    self._counted(
                        "orders",
                        self._order_rows(customer_ids, order_ids, stamp, paid_count, paid_total),
                    ),
                )
                if phases is not None:
                    phases.enter("customer_totals", rows=self._done["orders"])
                loader.load(
                    "customer_totals",
                    ("customer_id", "order_count", "total_cents", "email"),
                    zip(
                        customer_ids,
                        paid_count,
                        paid_total,
                        map(seed_email, customer_ids),
                        strict=True,
                    ),
                )
                self._phase = Phase.ITEMS
                if phases is not None:
                    phases.enter("items", rows=self.plan.customers)
                loader.load(
                    "order_items",
                    ("order_id", "sku", "quantity", "unit_price_cents"),
                    self._counted("items", self._item_rows(order_ids)),
                )
                self._phase = Phase.COMMITTING
                if phases is not None:
                    phases.enter("commit", rows=self._done["items"])
            if phases is not None:
                phases.close()
            self._phase = Phase.DONE
        except _Cancelled:
            self._error = DomainError("the seed was cancelled; nothing was written", "CANCELLED")
            self._phase = Phase.FAILED
            if phases is not None:
                phases.close(self._error)
        except BaseException as exc:  # handed to the caller, who maps and logs it
            self._error = exc
            self._phase = Phase.FAILED
            if phases is not None:
                phases.close(exc)
        finally:
            self._finished.set()
            self._report_finished()

    def _customer_rows(self, ids: Sequence[int], stamp: Any) -> Iterator[tuple[Any, ...]]:
        for customer_id in ids:
            email = seed_email(customer_id)  # lowercase already: its own key
            yield (customer_id, email, email, f"Customer {customer_id}", stamp)

    def _order_rows(
        self,
        customer_ids: Sequence[int],
        order_ids: Sequence[int],
        stamp: Any,
        paid_count: array[int],
        paid_total: array[int],
    ) -> Iterator[tuple[Any, ...]]:
        per_customer = self.plan.orders_per_customer
        items = range(self.plan.items_per_order)
        for n, order_id in enumerate(order_ids):
            c = n // per_customer
            status, archived = order_state(order_id)
            total = 0
            for i in items:
                _, quantity, price = item_values(order_id, i)
                total += quantity * price
            share = rollup_share(status, archived, total)
            paid_count[c] += share.order_count
            paid_total[c] += share.total_cents
            yield (order_id, customer_ids[c], status.value, archived, total, stamp, stamp)

    def _item_rows(self, order_ids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
        items = range(self.plan.items_per_order)
        for order_id in order_ids:
            for i in items:
                yield (order_id, *item_values(order_id, i))
