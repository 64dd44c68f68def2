"""The one error the client raises: a failed call, with the server's google.rpc.Status read."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["FieldViolation", "OrdersError"]


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class OrdersError(Exception):
    """A call that ended with a status other than OK.

    `reason` is the ErrorInfo reason (`ORDER_NOT_FOUND`, ...), `violations` the BadRequest
    field violations of an INVALID_ARGUMENT; both empty when the server sent no details (a
    connection that failed before reaching it, a deadline)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = violations if violations is not None else []

    def __str__(self) -> str:
        # One line, whatever the message holds: the CLI prints it after "error: ".
        text = " ".join(self.message.split()) or "(no message)"
        return f"{self.code.name}: {text}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> OrdersError:
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else None
        out = cls(code=code or grpc.StatusCode.UNKNOWN, message=details or str(error))
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except ValueError:  # the rich status disagrees with the call's: keep the call's
            status = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason = info.reason
        return out
