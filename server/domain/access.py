"""Who may call what: API tokens with a right each, and the admin token above them.

With no API tokens configured every RPC but Seed is open (the local default). With tokens,
every RPC needs one (`authorization: Bearer <token>`): a `read` token may read, a `write`
token may also change orders and customers, the admin token may do everything, Seed
included. Tokens are compared in constant time, as SHA-256 digests of a fixed length, so the
time a check takes says nothing of a token's content or length; they are never logged or
echoed (not even by the policy's repr).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from .errors import PermissionDenied, Unauthenticated

__all__ = ["AccessPolicy", "Right", "parse_api_tokens"]


class Right(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class AccessPolicy:
    api_tokens: tuple[tuple[bytes, Right], ...] = field(default=(), repr=False)
    admin_token: str | None = field(default=None, repr=False)
    is_production: bool = False
    # The configured tokens' digests, made once: each check digests only the presented token.
    _digests: tuple[tuple[bytes, Right], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        digests = [(_digest(token), right) for token, right in self.api_tokens]
        if self.admin_token is not None:
            digests.append((_digest(self.admin_token.encode()), Right.ADMIN))
        object.__setattr__(self, "_digests", tuple(digests))

    @property
    def open(self) -> bool:
        return not self.api_tokens

    def check(self, needed: Right, authorization: str | None) -> Right | None:
        """Raises Unauthenticated (no credential) or PermissionDenied (a credential without
        the right) unless `authorization` grants `needed`. Returns the right the token holds
        (what a trace may say of the caller's token), None when none was needed."""
        if needed < Right.ADMIN and self.open:
            return None
        if needed == Right.ADMIN and self.admin_token is None and self.open:
            if not self.is_production:
                return None  # the local default: Seed works out of the box
        presented = _bearer(authorization)
        if presented is None:
            what = "an admin token" if needed == Right.ADMIN else "an API token"
            raise Unauthenticated(
                f"this call needs {what}: send 'authorization: Bearer <token>'",
                reason="ADMIN_TOKEN_MISSING" if needed == Right.ADMIN else "TOKEN_MISSING",
            )
        granted = self._right_of(presented)
        if granted is None or granted < needed:
            if needed == Right.ADMIN:
                raise PermissionDenied("the admin token is not valid", reason="ADMIN_TOKEN_INVALID")
            raise PermissionDenied(
                "the token is not valid" if granted is None else "the token may not do this",
                reason="TOKEN_INVALID" if granted is None else "TOKEN_LACKS_RIGHT",
            )
        return granted

    def _right_of(self, presented: bytes) -> Right | None:
        digest = _digest(presented)
        best: Right | None = None
        # Every candidate is compared, digest against digest (always 32 bytes), so the time
        # taken says nothing about which matched, nor about any token's content or length.
        for candidate, right in self._digests:
            if hmac.compare_digest(digest, candidate) and (best is None or right > best):
                best = right
        return best


def _bearer(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return b"\x00invalid"  # a credential of the wrong shape matches nothing
    return token.strip().encode()


def parse_api_tokens(spec: str) -> tuple[tuple[bytes, Right], ...]:
    """`ORDERS_API_TOKENS`: comma- or newline-separated `[read:|write:]token` entries (write
    when no right is named), or `@/path/to/file` holding such entries, one a line."""
    spec = spec.strip()
    if spec.startswith("@"):
        spec = Path(spec[1:]).read_text()
    tokens: list[tuple[bytes, Right]] = []
    for raw in spec.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        right = Right.WRITE
        prefix, sep, rest = entry.partition(":")
        if sep and prefix in ("read", "write"):
            right = Right.READ if prefix == "read" else Right.WRITE
            entry = rest.strip()
        if entry:
            tokens.append((entry.encode(), right))
    return tuple(tokens)
