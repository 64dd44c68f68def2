"""The order rules over storage: one method per use case, one transaction per method."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.orm import Session

from ..storage import events as outbox
from ..storage import repository as repo
from ..storage.database import Database
from .errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from .lifecycle import Action, next_status, rollup_share
from .paging import MAX_PAGE_ITEMS, decode_token, encode_token, page_size
from .records import (
    Customer,
    IdempotencyKey,
    NewItem,
    Order,
    OrderFilter,
    Page,
    Status,
    SummaryRow,
)
from .seeding import SeedRun, plan_seed
from .validation import (
    MAX_EMAIL_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    Violations,
    order_total,
    require_positive_id,
)

__all__ = ["DEFAULT_SUMMARY_LIMIT", "MAX_SUMMARY_LIMIT", "OrderBook"]

DEFAULT_SUMMARY_LIMIT = 10
T = TypeVar("T")
MAX_SUMMARY_LIMIT = 1000


def _now() -> datetime:
    return datetime.now(UTC)


def _order_not_found(order_id: int) -> NotFound:
    return NotFound(f"order {order_id} does not exist", reason="ORDER_NOT_FOUND")


def _customer_not_found(customer_id: int) -> NotFound:
    return NotFound(f"customer {customer_id} does not exist", reason="CUSTOMER_NOT_FOUND")


class OrderBook:
    def __init__(
        self,
        database: Database,
        seed_max_rows: int,
        max_concurrent_seeds: int = 2,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._db = database
        self._seed_max_rows = seed_max_rows
        self._max_concurrent_seeds = max_concurrent_seeds
        self._seed_slots = threading.BoundedSemaphore(max_concurrent_seeds)
        self._seeds_lock = threading.Lock()
        self._running_seeds: set[SeedRun] = set()
        self._clock = clock

    # Customers

    def create_customer(
        self, email: str, name: str, idempotency: IdempotencyKey | None = None
    ) -> Customer:
        violations = Violations()
        violations.email("email", email)
        violations.text("name", name, MAX_NAME_LENGTH)
        _check_key(idempotency, violations)
        violations.raise_if_any()

        def create() -> Customer:
            with self._db.write() as session:
                now = self._clock()
                customer = repo.insert_customer(session, email, name, now)
                _record_key(session, idempotency, customer.id, now)
                return customer

        try:
            return self._once(idempotency, create, self.get_customer)
        except repo.EmailTaken:
            raise AlreadyExists(
                f"a customer with email {email!r} already exists (emails are case-insensitive)",
                reason="EMAIL_ALREADY_EXISTS",
            ) from None

    def get_customer(self, customer_id: int) -> Customer:
        require_positive_id("id", customer_id)
        with self._db.read() as connection:
            customer = repo.get_customer(connection, customer_id)
        if customer is None:
            raise _customer_not_found(customer_id)
        return customer

    def list_customers(self, requested_size: int, token: str) -> Page[Customer]:
        violations = Violations()
        size = page_size(requested_size, violations)
        after = decode_token(token, "customers", violations)
        violations.raise_if_any()
        with self._db.read() as connection:
            found = repo.list_customers(connection, after, size + 1)
        return _page(found, size, "customers", lambda c: c.id)

    # Orders

    def create_order(
        self,
        customer_id: int,
        items: Sequence[NewItem],
        idempotency: IdempotencyKey | None = None,
    ) -> Order:
        violations = Violations()
        violations.positive_id("customer_id", customer_id)
        violations.items("items", items)
        _check_key(idempotency, violations)
        violations.raise_if_any()

        def create() -> Order:
            with self._db.write() as session:
                customer = repo.get_customer(self._db.rows(session), customer_id)
                if customer is None:
                    raise _customer_not_found(customer_id)
                now = self._clock()
                order = repo.insert_order(session, customer, items, order_total(items), now)
                _record_key(session, idempotency, order.id, now)
                outbox.insert_event(session, "CREATED", order, now)
                return order

        return self._once(idempotency, create, self.get_order)

    def _once(
        self,
        idempotency: IdempotencyKey | None,
        create: Callable[[], T],
        load: Callable[[int], T],
    ) -> T:
        """Runs `create` unless its idempotency key was already used by a create that
        committed: then answers with what that create made (`load` of its id), or refuses a
        key reused for another request. The key is written in the create's own transaction,
        so a create and its key commit, or roll back, together."""
        if idempotency is None:
            return create()
        found = self._replay(idempotency, load)
        if found is not None:
            return found
        try:
            return create()
        except (repo.KeyTaken, repo.EmailTaken):
            # A create with the same key committed while this one ran (its key, or for a
            # customer its email, stopped this one, which rolled back): answer with its result.
            found = self._replay(idempotency, load)
            if found is None:
                raise
            return found

    def _replay(self, idempotency: IdempotencyKey, load: Callable[[int], T]) -> T | None:
        with self._db.read() as connection:
            record = repo.get_key(connection, idempotency.key)
        if record is None:
            return None
        if (record.method, record.fingerprint) != (idempotency.method, idempotency.fingerprint):
            raise FailedPrecondition(
                f"idempotency key {idempotency.key!r} was already used with another request"
                f" ({record.method}); use a new key for a new request",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return load(record.resource_id)

    def get_order(self, order_id: int) -> Order:
        require_positive_id("id", order_id)
        with self._db.read() as connection:
            order = repo.get_order(connection, order_id)
        if order is None:
            raise _order_not_found(order_id)
        return order

    def list_orders(
        self,
        filters: OrderFilter,
        requested_size: int,
        token: str,
        violations: Violations | None = None,
    ) -> Page[Order]:
        """`violations` may already hold what the caller found wrong while decoding the
        request; every bad field is reported at once."""
        violations = violations or Violations()
        if filters.customer_id is not None and filters.customer_id < 0:
            violations.add("customer_id", f"must not be negative, got {filters.customer_id}")
        if filters.email is not None:
            if len(filters.email) > MAX_EMAIL_LENGTH:
                violations.add("email", f"must be at most {MAX_EMAIL_LENGTH} characters")
            violations.storable("email", filters.email)
        size = page_size(requested_size, violations)
        after = decode_token(token, filters, violations)
        violations.raise_if_any()
        with self._db.read() as connection:
            found, cut = repo.list_orders(connection, filters, after, size + 1, MAX_PAGE_ITEMS)
        if cut and len(found) <= size:
            # Ended by the item budget, not by the end of the list: there is more.
            return Page(found, encode_token(found[-1].id, filters))
        return _page(found, size, filters, lambda o: o.id)

    def change_status(self, order_id: int, action: Action) -> Order:
        """Pay, ship or cancel. A repeat of the transition already made returns the order
        unchanged. The customer is never touched beyond its summary row."""
        require_positive_id("id", order_id)
        with self._db.write() as session:
            state = repo.lock_order(session, order_id)
            if state is None:
                raise _order_not_found(order_id)
            target = next_status(action, state.status, state.is_archived)
            now = self._clock()
            if target is not None:
                repo.update_order(session, order_id, now, status=target)
                self._move_rollup(session, state, target, state.is_archived)
            order = repo.get_order(self._db.rows(session), order_id)
            assert order is not None
            if target is not None:  # a repeat that changed nothing is no event
                outbox.insert_event(session, target.value, order, now)
        return order

    def archive_order(self, order_id: int) -> Order:
        require_positive_id("id", order_id)
        with self._db.write() as session:
            state = repo.lock_order(session, order_id)
            if state is None:
                raise _order_not_found(order_id)
            now = self._clock()
            if not state.is_archived:
                repo.update_order(session, order_id, now, is_archived=True)
                self._move_rollup(session, state, state.status, True)
            order = repo.get_order(self._db.rows(session), order_id)
            assert order is not None
            if not state.is_archived:
                outbox.insert_event(session, "ARCHIVED", order, now)
        return order

    @staticmethod
    def _move_rollup(
        session: Session, state: repo.OrderState, status: Status, is_archived: bool
    ) -> None:
        before = rollup_share(state.status, state.is_archived, state.total_cents)
        after = rollup_share(status, is_archived, state.total_cents)
        delta = after - before
        if delta.order_count or delta.total_cents:
            repo.add_to_rollup(session, state.customer_id, delta.order_count, delta.total_cents)

    # Summary and seed

    def summary(self, limit: int) -> list[SummaryRow]:
        violations = Violations()
        if limit < 0:
            violations.add("limit", f"must not be negative, got {limit}")
        violations.raise_if_any()
        limit = min(limit or DEFAULT_SUMMARY_LIMIT, MAX_SUMMARY_LIMIT)
        with self._db.read() as connection:
            return repo.summary(connection, limit)

    def start_seed(self, customers: int, orders_per_customer: int, items_per_order: int) -> SeedRun:
        plan = plan_seed(customers, orders_per_customer, items_per_order, self._seed_max_rows)
        # Each seed holds a database connection and a core for its whole run.
        if not self._seed_slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self._max_concurrent_seeds} seeds are already running on this server; "
                "try again when one has finished (ORDERS_MAX_CONCURRENT_SEEDS)",
                reason="SEED_LIMIT",
            )

        def finished() -> None:
            with self._seeds_lock:
                self._running_seeds.discard(run)
            self._seed_slots.release()

        run = SeedRun(self._db, plan, on_finished=finished)
        with self._seeds_lock:
            self._running_seeds.add(run)
        return run

    def stop_seeds(self, wait: float = 10.0) -> None:
        """Cancels every running seed and waits for its rollback: at shutdown, after the grace
        period, no load may be cut off by the process exiting under it."""
        with self._seeds_lock:
            running = list(self._running_seeds)
        for run in running:
            run.cancel(wait)


def _check_key(idempotency: IdempotencyKey | None, violations: Violations) -> None:
    if idempotency is None:
        return
    key = idempotency.key
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all(" " < c <= "~" for c in key):
        violations.add(
            "idempotency-key",
            f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters",
        )


def _record_key(
    session: Session, idempotency: IdempotencyKey | None, resource_id: int, now: datetime
) -> None:
    if idempotency is not None:
        repo.insert_key(
            session, idempotency.key, idempotency.method, idempotency.fingerprint, resource_id, now
        )


def _page(found: list[T], size: int, filters: object, key: Callable[[T], int]) -> Page[T]:
    if len(found) > size:
        found = found[:size]
        return Page(found, encode_token(key(found[-1]), filters))
    return Page(found, "")
