"""Errors -> gRPC status: the one place that maps them (AIP-193: google.rpc.Status + details)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain import errors

__all__ = ["DOMAIN", "code_of", "to_grpc_status", "to_status_proto"]

DOMAIN = "orders.v1"

_CODES: Sequence[tuple[type[errors.DomainError], grpc.StatusCode]] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def code_of(error: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    if isinstance(error, errors.DomainError) and error.reason == "CANCELLED":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def to_status_proto(error: BaseException, request_id: str | None = None) -> status_pb2.Status:
    """A google.rpc.Status for `error`. Anything that is not a DomainError is INTERNAL with a
    message that shows nothing of the server's insides."""
    code = code_of(error)
    if not isinstance(error, errors.DomainError) or code == grpc.StatusCode.INTERNAL:
        suffix = f" (request id {request_id})" if request_id else ""
        return status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; the server log has the details{suffix}",
        )
    detail = any_pb2.Any()
    if isinstance(error, errors.InvalidArgument):
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    else:
        detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN))
    return status_pb2.Status(code=code.value[0], message=error.message, details=[detail])


def to_grpc_status(
    status: status_pb2.Status, trailing: Sequence[tuple[str, str]] = ()
) -> grpc.Status:
    converted = rpc_status.to_status(status)
    return converted._replace(  # type: ignore[attr-defined, no-any-return]
        trailing_metadata=tuple(converted.trailing_metadata) + tuple(trailing)
    )
