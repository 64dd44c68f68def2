"""Domain rules, without a network: the state machine, the rollup share, page tokens, inputs."""

from __future__ import annotations

import itertools
import time

import pytest

from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.lifecycle import Action, Rollup, next_status, rollup_share
from server.domain.paging import decode_token, encode_token, page_size
from server.domain.records import NewItem, OrderFilter, Status
from server.domain.seeding import Phase, SeedRun, plan_seed
from server.domain.validation import Violations, order_total

# In process: no server (scripts/test --fast runs these).
pytestmark = pytest.mark.fast

LEGAL = {
    (Action.PAY, Status.DRAFT): Status.PAID,
    (Action.SHIP, Status.PAID): Status.SHIPPED,
    (Action.CANCEL, Status.DRAFT): Status.CANCELLED,
    (Action.CANCEL, Status.PAID): Status.CANCELLED,
}
REPEATS = {
    (Action.PAY, Status.PAID),
    (Action.SHIP, Status.SHIPPED),
    (Action.CANCEL, Status.CANCELLED),
}


@pytest.mark.parametrize(("action", "status"), list(itertools.product(Action, Status)))
def test_every_transition_is_legal_a_repeat_or_refused(action: Action, status: Status) -> None:
    if (action, status) in LEGAL:
        assert next_status(action, status, is_archived=False) == LEGAL[action, status]
    elif (action, status) in REPEATS:
        assert next_status(action, status, is_archived=False) is None
        assert next_status(action, status, is_archived=True) is None
    else:
        with pytest.raises(FailedPrecondition) as raised:
            next_status(action, status, is_archived=False)
        assert raised.value.reason == "INVALID_TRANSITION"


def test_archived_orders_refuse_transitions() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        next_status(Action.PAY, Status.DRAFT, is_archived=True)
    assert raised.value.reason == "ORDER_ARCHIVED"


def test_only_paid_unarchived_orders_count_in_the_summary() -> None:
    assert rollup_share(Status.PAID, False, 700) == Rollup(1, 700)
    for status, archived in itertools.product(Status, (False, True)):
        if (status, archived) != (Status.PAID, False):
            assert rollup_share(status, archived, 700) == Rollup(0, 0)


def test_page_token_round_trips_and_is_bound_to_its_filters() -> None:
    filters = OrderFilter(status=Status.PAID, email="a%b")
    token = encode_token(42, filters)
    violations = Violations()
    assert decode_token(token, filters, violations) == 42
    violations.raise_if_any()
    other = Violations()
    decode_token(token, OrderFilter(status=Status.DRAFT, email="a%b"), other)
    with pytest.raises(InvalidArgument, match="different filters"):
        other.raise_if_any()


@pytest.mark.parametrize("token", ["garbage", "e30", "!!!", encode_token(1, None)[:-3]])
def test_foreign_page_tokens_are_invalid_arguments(token: str) -> None:
    violations = Violations()
    decode_token(token, None, violations)
    with pytest.raises(InvalidArgument) as raised:
        violations.raise_if_any()
    assert raised.value.violations[0].field == "page_token"


def test_page_size_defaults_caps_and_refuses_negatives() -> None:
    violations = Violations()
    assert page_size(0, violations) == 50
    assert page_size(7, violations) == 7
    assert page_size(10_000, violations) == 500
    violations.raise_if_any()
    page_size(-1, violations)
    with pytest.raises(InvalidArgument):
        violations.raise_if_any()


def test_every_bad_item_field_is_reported_at_once() -> None:
    violations = Violations()
    violations.items("items", [NewItem("", 0, -1), NewItem("ok", 1, 5), NewItem("x", 2_000_000, 1)])
    with pytest.raises(InvalidArgument) as raised:
        violations.raise_if_any()
    assert [v.field for v in raised.value.violations] == [
        "items[0].sku",
        "items[0].quantity",
        "items[0].unit_price_cents",
        "items[2].quantity",
    ]


def test_order_total_is_the_sum_of_quantity_times_price() -> None:
    assert order_total([NewItem("a", 3, 250), NewItem("b", 1, 99)]) == 849


@pytest.mark.parametrize(
    "email", ["plain", "a@b", "@example.com", "a b@example.com", "x@seed.invalid", "a@@b.com"]
)
def test_malformed_or_reserved_emails_are_refused(email: str) -> None:
    violations = Violations()
    violations.email("email", email)
    with pytest.raises(InvalidArgument):
        violations.raise_if_any()


def test_seed_plan_names_every_field_out_of_range() -> None:
    with pytest.raises(InvalidArgument) as raised:
        plan_seed(0, -1, 101, max_rows=1_000_000)
    assert [v.field for v in raised.value.violations] == [
        "customers",
        "orders_per_customer",
        "items_per_order",
    ]


def test_seed_plan_respects_the_row_cap() -> None:
    assert plan_seed(10, 10, 10, max_rows=1110).rows == 1110
    with pytest.raises(InvalidArgument, match="ORDERS_SEED_MAX_ROWS"):
        plan_seed(10, 10, 10, max_rows=1109)


class _DoneBeforeFinished(SeedRun):
    """A seed whose worker sets its last phase, then is slow to say it has finished (what a
    loaded machine does between the two), while the reports go on."""

    def _load(self) -> None:
        self._phase = Phase.DONE
        time.sleep(0.05)
        self._finished.set()


def test_a_seed_reports_its_outcome_once_even_if_a_snapshot_falls_before_the_finish() -> None:
    # No database: the worker that would use it is replaced.
    run = _DoneBeforeFinished(None, plan_seed(1, 1, 1, max_rows=10))  # type: ignore[arg-type]
    reports = list(run.reports(interval=0.001))
    assert [r.done for r in reports] == [False] * (len(reports) - 1) + [True]
