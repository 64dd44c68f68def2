"""Input rules. Every check adds to one list, so a caller learns every bad field at once."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import FieldViolation, InvalidArgument
from .records import NewItem

__all__ = [
    "MAX_EMAIL_LENGTH",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_ITEMS_PER_ORDER",
    "MAX_NAME_LENGTH",
    "MAX_ORDER_TOTAL_CENTS",
    "MAX_QUANTITY",
    "MAX_SKU_LENGTH",
    "MAX_UNIT_PRICE_CENTS",
    "Violations",
    "order_total",
    "require_positive_id",
]

MAX_EMAIL_LENGTH = 254
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_NAME_LENGTH = 200
MAX_SKU_LENGTH = 64
MAX_QUANTITY = 1_000_000
MAX_UNIT_PRICE_CENTS = 10_000_000_000
MAX_ITEMS_PER_ORDER = 1_000
# Far above any real order, and low enough that no customer's sum can overflow int64.
MAX_ORDER_TOTAL_CENTS = 1_000_000_000_000


class Violations:
    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._found.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self._found:
            raise InvalidArgument(self._found)

    def positive_id(self, field: str, value: int) -> None:
        if value <= 0:
            self.add(field, f"must be a positive id, got {value}")

    def storable(self, field: str, value: str) -> bool:
        """PostgreSQL text cannot hold NUL characters; refuse them on every database alike."""
        if "\x00" in value:
            self.add(field, "must not contain NUL characters")
            return False
        return True

    def email(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
            return
        if not self.storable(field, value):
            return
        if len(value) > MAX_EMAIL_LENGTH:
            self.add(field, f"must be at most {MAX_EMAIL_LENGTH} characters")
            return
        local, at, domain = value.rpartition("@")
        if (
            not at
            or not local
            or "@" in local
            or "." not in domain.strip(".")
            or any(ch.isspace() for ch in value)
        ):
            self.add(field, f"must be an email address like name@example.com, got {value!r}")
        elif domain.lower().rstrip(".").endswith(".invalid"):
            # RFC 2606 reserves .invalid; seeded customers live there, so they never collide.
            self.add(field, "must not use the reserved .invalid domain")

    def text(self, field: str, value: str, max_length: int) -> None:
        if not self.storable(field, value):
            return
        if not value.strip():
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")

    def items(self, field: str, items: Sequence[NewItem]) -> None:
        if not items:
            # An order with nothing in it is a caller's mistake, not a sale. The seed writes its
            # rows without this check and may still make empty orders when asked to.
            self.add(field, "must hold at least one item, got none")
            return
        if len(items) > MAX_ITEMS_PER_ORDER:
            self.add(field, f"must hold at most {MAX_ITEMS_PER_ORDER} items, got {len(items)}")
            return
        before = len(self._found)
        for i, item in enumerate(items):
            self.text(f"{field}[{i}].sku", item.sku, MAX_SKU_LENGTH)
            if not 1 <= item.quantity <= MAX_QUANTITY:
                self.add(
                    f"{field}[{i}].quantity",
                    f"must be between 1 and {MAX_QUANTITY}, got {item.quantity}",
                )
            if not 0 <= item.unit_price_cents <= MAX_UNIT_PRICE_CENTS:
                self.add(
                    f"{field}[{i}].unit_price_cents",
                    f"must be between 0 and {MAX_UNIT_PRICE_CENTS}, got {item.unit_price_cents}",
                )
        if len(self._found) == before and order_total(items) > MAX_ORDER_TOTAL_CENTS:
            self.add(field, f"make a total above the maximum of {MAX_ORDER_TOTAL_CENTS} cents")


def require_positive_id(field: str, value: int) -> None:
    """For a request whose only input is one id."""
    violations = Violations()
    violations.positive_id(field, value)
    violations.raise_if_any()


def order_total(items: Sequence[NewItem]) -> int:
    """The order's total_cents: computed here and nowhere else from a caller's items."""
    return sum(item.quantity * item.unit_price_cents for item in items)
