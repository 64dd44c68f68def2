"""The order state machine (AIP-216: states change only through transition methods)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .errors import FailedPrecondition
from .records import Status

__all__ = ["Action", "Rollup", "next_status", "rollup_share"]


class Action(StrEnum):
    PAY = "pay"
    SHIP = "ship"
    CANCEL = "cancel"


_RULES: dict[Action, tuple[frozenset[Status], Status]] = {
    Action.PAY: (frozenset({Status.DRAFT}), Status.PAID),
    Action.SHIP: (frozenset({Status.PAID}), Status.SHIPPED),
    Action.CANCEL: (frozenset({Status.DRAFT, Status.PAID}), Status.CANCELLED),
}


def next_status(action: Action, current: Status, is_archived: bool) -> Status | None:
    """The status `action` leads to, or None when the order already made that transition
    (a repeat succeeds unchanged). Raises FailedPrecondition for anything else."""
    sources, target = _RULES[action]
    if current == target:
        return None
    if is_archived:
        raise FailedPrecondition(
            f"cannot {action} an archived order (status {current})", reason="ORDER_ARCHIVED"
        )
    if current not in sources:
        allowed = " or ".join(sorted(sources))
        raise FailedPrecondition(
            f"cannot {action} an order in status {current}: {action} needs {allowed}",
            reason="INVALID_TRANSITION",
        )
    return target


@dataclass(frozen=True, slots=True)
class Rollup:
    """An order's share in its customer's summary row."""

    order_count: int
    total_cents: int

    def __sub__(self, other: Rollup) -> Rollup:
        return Rollup(self.order_count - other.order_count, self.total_cents - other.total_cents)


def rollup_share(status: Status, is_archived: bool, total_cents: int) -> Rollup:
    """The summary counts PAID, non-archived orders only."""
    if status == Status.PAID and not is_archived:
        return Rollup(1, total_cents)
    return Rollup(0, 0)
