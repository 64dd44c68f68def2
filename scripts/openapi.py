"""Generates docs/openapi.yaml (OpenAPI 3.0) from the protos' google.api.http routes.

The input is the descriptor set Envoy's transcoder reads (gateway/orders.pb, made by
scripts/generate from protos/, with source info), so the document describes exactly the routes
Envoy serves. JSON shapes follow the proto3 JSON mapping as the transcoder prints it (envoy.yaml's
print_options): proto field names, int64 as a decimal string (a string or a number in requests),
enums by name, Timestamp as RFC 3339, Duration as seconds with an `s`, primitive fields and
repeated fields always printed, unset message fields left out. Errors are google.rpc.Status as
JSON: {code, message, details}. In requests any field may be null (read as its default).

What the protos cannot say comes from where the server keeps it: which RPCs answer 201 (as the
server's x-http-code metadata makes them) from the method table, orders_client/methods.py, and
the bounds of each request field from the constants the server validates with. The rest is
written here, once: which errors a route can give, the trailing slash the Django clients use,
the bearer credential, and the newline-delimited stream of Seed. What Envoy adds to every path
is derived like its routes (gateway/routes.py): HEAD beside each GET, OPTIONS with the path's
`Allow`, and a 405 with `Allow` for any other method. The document's version is the
project's (pyproject.toml).

    python scripts/openapi.py            # writes docs/openapi.yaml
    python scripts/openapi.py --check    # exit 1 when docs/openapi.yaml is stale
    python scripts/openapi.py --stdout   # prints it
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from orders_client.methods import METHODS, Method
from server.domain.seeding import (
    MAX_SEED_CUSTOMERS,
    MAX_SEED_ITEMS_PER_ORDER,
    MAX_SEED_ORDERS_PER_CUSTOMER,
)
from server.domain.validation import (
    MAX_EMAIL_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_ITEMS_PER_ORDER,
    MAX_NAME_LENGTH,
    MAX_QUANTITY,
    MAX_SKU_LENGTH,
    MAX_UNIT_PRICE_CENTS,
)

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "gateway" / "orders.pb"
OUTPUT = ROOT / "docs" / "openapi.yaml"
PYPROJECT = ROOT / "pyproject.toml"
PROTO_FILE = "orders/v1/orders.proto"

FDP = descriptor_pb2.FieldDescriptorProto
INT64_TYPES = {FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64}
UINT64_TYPES = {FDP.TYPE_UINT64, FDP.TYPE_FIXED64}
INT32_TYPES = {FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32}
UINT32_TYPES = {FDP.TYPE_UINT32, FDP.TYPE_FIXED32}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# The content type of a server-streaming answer (envoy.yaml's seed route sets it).
STREAM_MEDIA_TYPE = "application/x-ndjson"
STREAM_NOTE = (
    "The body is newline-delimited JSON (application/x-ndjson): one {message} object a"
    " line, sent as it happens."
)
# What a stream's lines mean beyond that, for the streams that say more than their messages.
STREAM_OUTCOMES = {
    "Seed": " The outcome is in the last line, the one with"
    ' `"done": true`: `PHASE_DONE`, or `PHASE_FAILED` with an `error`. A stream that ends'
    " without such a line was cut, and the seed rolled back.",
}
ERRORS = {
    "400": "INVALID_ARGUMENT (a bad field, unknown enum or query parameter, malformed JSON,"
    " path and body disagreeing) or FAILED_PRECONDITION (a transition the status does not"
    " allow, an Idempotency-Key already used with another request)",
    "401": "UNAUTHENTICATED: no bearer token where one is required",
    "403": "PERMISSION_DENIED: a token without the right",
    "404": "NOT_FOUND: no such resource or path",
    "409": "ALREADY_EXISTS",
    "413": "RESOURCE_EXHAUSTED: request body over 1 MiB",
    "429": "RESOURCE_EXHAUSTED: a server limit was reached",
    "503": "UNAVAILABLE: the server or its database is unreachable; retry later",
    "504": "DEADLINE_EXCEEDED: no answer in time",
}
ALLOW_HEADER = {
    "description": "The methods this path answers (HEAD wherever GET is, and OPTIONS).",
    "required": True,
    "schema": {"type": "string", "example": "GET, HEAD, OPTIONS"},
}
METHOD_NOT_ALLOWED = (
    "UNIMPLEMENTED: the path does not have this method (Envoy's answer, with `Allow` listing"
    " those it has); a path no route has is a 404"
)


# The server's validation rules (docs/architecture.md, "Where the contract is silent"), which
# the protos only state in comments: they bound what a request may hold, never what a response
# holds. Anything outside them is a 400. Each upper bound is the server's own constant, so the
# two cannot drift apart; the lower ones are not numbers the server keeps (a positive id, a
# required text, an order of at least one item). The fuzz test
# (tests/reliability/test_openapi.py) sends values on both sides of each bound.
_ID = {"minimum": 1}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    **{
        f".orders.v1.{message}.id": _ID
        for message in (
            "GetCustomerRequest",
            "GetOrderRequest",
            "PayOrderRequest",
            "ShipOrderRequest",
            "CancelOrderRequest",
            "ArchiveOrderRequest",
        )
    },
    ".orders.v1.CreateCustomerRequest.email": {
        "maxLength": MAX_EMAIL_LENGTH,
        "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    },
    ".orders.v1.CreateCustomerRequest.name": {
        "minLength": 1,
        "maxLength": MAX_NAME_LENGTH,
        "pattern": r"\S",
    },
    ".orders.v1.ListCustomersRequest.page_size": {"minimum": 0},
    ".orders.v1.CreateOrderRequest.customer_id": _ID,
    ".orders.v1.CreateOrderRequest.items": {"minItems": 1, "maxItems": MAX_ITEMS_PER_ORDER},
    ".orders.v1.OrderItem.sku": {"minLength": 1, "maxLength": MAX_SKU_LENGTH, "pattern": r"\S"},
    ".orders.v1.OrderItem.quantity": {"minimum": 1, "maximum": MAX_QUANTITY},
    ".orders.v1.OrderItem.unit_price_cents": {"minimum": 0, "maximum": MAX_UNIT_PRICE_CENTS},
    ".orders.v1.ListOrdersRequest.page_size": {"minimum": 0},
    ".orders.v1.ListOrdersRequest.email": {"maxLength": MAX_EMAIL_LENGTH},
    ".orders.v1.ListOrdersRequest.customer_id": {"minimum": 0},
    ".orders.v1.GetSummaryRequest.limit": {"minimum": 0},
    ".orders.v1.SeedRequest.customers": {"minimum": 1, "maximum": MAX_SEED_CUSTOMERS},
    ".orders.v1.SeedRequest.orders_per_customer": {
        "minimum": 0,
        "maximum": MAX_SEED_ORDERS_PER_CUSTOMER,
    },
    ".orders.v1.SeedRequest.items_per_order": {"minimum": 0, "maximum": MAX_SEED_ITEMS_PER_ORDER},
}


def _constrain(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the bounds of `extra`; for an int64 that is a string or a number, the
    numeric bounds go on the number."""
    if "oneOf" in schema:
        branches = [
            {**b, **extra} if b.get("type") == "integer" else dict(b) for b in schema["oneOf"]
        ]
        return {**schema, "oneOf": branches}
    return {**schema, **extra}


@dataclass
class Comments:
    """Leading comments of the proto file, by descriptor path."""

    by_path: dict[tuple[int, ...], str] = field(default_factory=dict)

    @classmethod
    def of(cls, file: descriptor_pb2.FileDescriptorProto) -> Comments:
        out = cls()
        for location in file.source_code_info.location:
            text = location.leading_comments.strip()
            if text:
                out.by_path[tuple(location.path)] = " ".join(
                    line.strip() for line in text.splitlines()
                )
        return out

    def get(self, *path: int) -> str | None:
        return self.by_path.get(path)


class Generator:
    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = {f.name: f for f in descriptor_set.file}
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (or name.field) -> comment
        for file in descriptor_set.file:
            comments = Comments.of(file)
            for index, message in enumerate(file.message_type):
                self._index_message(f".{file.package}", message, comments, (4, index))
            for index, enum in enumerate(file.enum_type):
                self.enums[f".{file.package}.{enum.name}"] = enum
                if text := comments.get(5, index):
                    self.comments[f".{file.package}.{enum.name}"] = text
        self.schemas: dict[str, Any] = {}
        self.schema_names: dict[tuple[str, str], str] = {}  # (full name, direction) -> name

    def _index_message(
        self,
        scope: str,
        message: descriptor_pb2.DescriptorProto,
        comments: Comments,
        path: tuple[int, ...],
    ) -> None:
        name = f"{scope}.{message.name}"
        self.messages[name] = message
        if text := comments.get(*path):
            self.comments[name] = text
        for index, fld in enumerate(message.field):
            if text := comments.get(*path, 2, index):
                self.comments[f"{name}.{fld.name}"] = text
        for index, nested in enumerate(message.nested_type):
            self._index_message(name, nested, comments, (*path, 3, index))
        for index, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = enum
            if text := comments.get(*path, 4, index):
                self.comments[f"{name}.{enum.name}"] = text

    # ----------------------------------------------------------------------------------------
    # Schemas.

    def _short(self, full_name: str) -> str:
        """orders.v1.Order.Status -> Order.Status; google.rpc.Status -> google.rpc.Status."""
        name = full_name.lstrip(".")
        return name.removeprefix("orders.v1.")

    def ref(self, full_name: str, direction: str) -> dict[str, Any]:
        """A $ref to the schema of a message or enum, as sent in `direction` ("in" for
        requests, "out" for responses), generating it on first use."""
        direction = "out" if direction == "out" else "in"
        key = (full_name, direction)
        if key not in self.schema_names:
            base = self._short(full_name)
            name = base if direction == "out" else f"{base}Input"
            self.schema_names[key] = name
            self.schemas[name] = {}  # reserve: recursive messages terminate
            self.schemas[name] = self._build(full_name, direction)
        return {"$ref": f"#/components/schemas/{self.schema_names[key]}"}

    def _build(self, full_name: str, direction: str) -> dict[str, Any]:
        if full_name in self.enums:
            enum = self.enums[full_name]
            names = {"type": "string", "enum": [v.name for v in enum.value]}
            text = self.comments.get(full_name, "")
            if direction == "out":
                schema: dict[str, Any] = names
            else:
                # The transcoder also takes a known number (`?status=2`), and a name in any case
                # (case_insensitive_enum_parsing).
                numbers = {"type": "integer", "enum": [v.number for v in enum.value]}
                schema = {"oneOf": [names, numbers]}
                text = (text + " " if text else "") + (
                    "A name in any case (`paid`, `PAID`) or a known number."
                )
            if text:
                schema["description"] = text
            return schema
        message = self.messages[full_name]
        if well_known := self._well_known(full_name, direction):
            return well_known
        properties: dict[str, Any] = {}
        required: list[str] = []
        for fld in message.field:
            prop = self.field_schema(fld, direction, full_name)
            if direction != "out":
                prop = _nullable(prop)
            comment = self.comments.get(f"{full_name}.{fld.name}")
            if comment:
                prop = _describe(prop, comment)
            if comment and comment.startswith("Output only") and direction != "out":
                # AIP-203: the server sets it and ignores what a request says.
                prop = {**prop, "readOnly": True}
            properties[fld.name] = prop
            is_message = fld.type == FDP.TYPE_MESSAGE and fld.label != FDP.LABEL_REPEATED
            # Printed with always_print_primitive_fields: every field but an unset message.
            if direction == "out" and not is_message:
                required.append(fld.name)
        schema = {"type": "object"}
        if comment := self.comments.get(full_name):
            schema["description"] = comment
        schema["properties"] = properties
        if required:
            schema["required"] = required
        if direction == "out":
            schema["additionalProperties"] = False
        return schema

    def _well_known(self, full_name: str, direction: str) -> dict[str, Any] | None:
        if full_name == ".google.protobuf.Timestamp":
            return {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339, UTC (`2026-11-26T04:18:40.190823Z`).",
            }
        if full_name == ".google.protobuf.Duration":
            return {
                "type": "string",
                "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
                "description": "Seconds with an `s` (`1.600059904s`).",
            }
        if full_name == ".google.protobuf.Any":
            return {
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
                "additionalProperties": True,
                "description": "A message of the type `@type` names, its fields beside it.",
            }
        if full_name == ".google.rpc.Status":
            # Envoy's own rejections carry only code and message.
            return {
                "type": "object",
                "description": "An error: the gRPC status code (a number), a message, and for"
                " errors from the server their details (google.rpc.BadRequest naming each"
                " invalid field, google.rpc.ErrorInfo with a machine-readable reason).",
                "properties": {
                    "code": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 16},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": self.ref(".google.protobuf.Any", "out")},
                },
                "required": ["code", "message"],
            }
        return None

    def field_schema(
        self, fld: descriptor_pb2.FieldDescriptorProto, direction: str, owner: str = ""
    ) -> Any:
        schema = self._field_schema(fld, direction)
        extra = CONSTRAINTS.get(f"{owner}.{fld.name}")
        if extra and direction != "out":
            schema = _constrain(schema, extra)
        return schema

    def _field_schema(self, fld: descriptor_pb2.FieldDescriptorProto, direction: str) -> Any:
        if fld.label == FDP.LABEL_REPEATED:
            entry = self._map_entry(fld)
            if entry is not None:
                return {
                    "type": "object",
                    "additionalProperties": self.field_schema(entry.field[1], direction),
                }
            single = descriptor_pb2.FieldDescriptorProto()
            single.CopyFrom(fld)
            single.label = FDP.LABEL_OPTIONAL
            element = self.field_schema(single, direction)
            if direction != "out" and fld.type == FDP.TYPE_MESSAGE:
                # A null element is skipped by the transcoder's JSON parser.
                element = _nullable(element)
            return {"type": "array", "items": element}
        if fld.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            return self.ref(fld.type_name, direction)
        return scalar_schema(fld.type, direction)

    def _map_entry(
        self, fld: descriptor_pb2.FieldDescriptorProto
    ) -> descriptor_pb2.DescriptorProto | None:
        if fld.type != FDP.TYPE_MESSAGE:
            return None
        message = self.messages[fld.type_name]
        return message if message.options.map_entry else None

    # ----------------------------------------------------------------------------------------
    # Paths.

    def document(self) -> dict[str, Any]:
        file = self.files[PROTO_FILE]
        comments = Comments.of(file)
        paths: dict[str, dict[str, Any]] = {}
        operations: list[tuple[str, str, str, descriptor_pb2.MethodDescriptorProto]] = []
        for s_index, service in enumerate(file.service):
            for m_index, method in enumerate(service.method):
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    verb, template = _verb_and_template(binding)
                    if verb is None:
                        continue
                    path, path_fields = openapi_path(template)
                    operation = self.operation(
                        service.name,
                        method,
                        binding.body,
                        path_fields,
                        verb,
                        comments.get(6, s_index, 2, m_index),
                    )
                    paths.setdefault(path, {})[verb] = operation
                    operations.append((path, verb, operation["operationId"], method))
        self._add_links(paths, operations)
        for path, item in paths.items():
            _add_head_and_options(path, item)
        service = file.service[0]
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "Orders service REST/JSON API",
                "version": project_version(),
                "description": (
                    f"Generated by scripts/openapi from the google.api.http routes of"
                    f" {PROTO_FILE} ({file.package}.{service.name}); do not edit by hand."
                    " Served by Envoy's gRPC-JSON transcoder (see docs/rest.md). Every path"
                    " answers with and without its trailing slash. JSON follows the proto3"
                    " JSON mapping: proto field names, int64 as a decimal string (a string or"
                    " a number in requests), enums by name (any case in requests), timestamps"
                    " RFC 3339; primitive and repeated fields are always printed. Unknown"
                    " body fields are ignored; an unknown query parameter is a 400; a body"
                    " over 1 MiB is a 413. Every GET also answers HEAD (its status and headers,"
                    " no body); every path answers OPTIONS with 204 and `Allow`, and any other"
                    " method with a 405 and `Allow` (components/responses/Error405). Browsers"
                    " may call from the origins the gateway is configured with"
                    " (ORDERS_CORS_ORIGINS, docs/rest.md)."
                ),
            },
            "servers": [{"url": "http://localhost:8080", "description": "scripts/run"}],
            "tags": [{"name": service.name, "description": comments.get(6, 0) or ""}],
            "security": [{}, {"bearer": []}],
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "Where the server is configured with tokens"
                        " (ORDERS_API_TOKENS; ORDERS_ADMIN_TOKEN for Seed):"
                        " `authorization: Bearer <token>`.",
                    }
                },
                "schemas": dict(sorted(self.schemas.items())),
            },
        }

    def operation(
        self,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        body: str,
        path_fields: list[str],
        verb: str,
        comment: str | None,
    ) -> dict[str, Any]:
        request = self.messages[method.input_type]
        by_name = {f.name: f for f in request.field}
        parameters: list[dict[str, Any]] = []
        for name in path_fields:
            fld = by_name[name]  # (nested field paths are not used by this API)
            parameters.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": self.field_schema(fld, "param", method.input_type),
                    **self._field_doc(method.input_type, name),
                }
            )
        if not body:
            for fld in request.field:
                if fld.name in path_fields or fld.type == FDP.TYPE_MESSAGE:
                    continue
                parameters.append(
                    {
                        "name": fld.name,
                        "in": "query",
                        "required": False,
                        "schema": self.field_schema(fld, "param", method.input_type),
                        **self._field_doc(method.input_type, fld.name),
                    }
                )
        entry = _table_entry(method.name)
        if entry.creates:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                        "pattern": "^[!-~]+$",
                    },
                    "description": "Sent again with the same key and body, the create answers"
                    " what the first one made and creates nothing; the same key with another"
                    " body is a 400 (FAILED_PRECONDITION). Envoy retries such a write when its"
                    " connection is cut.",
                }
            )
        operation: dict[str, Any] = {
            "operationId": method.name,
            "tags": [service],
            "summary": _first_sentence(comment or method.name),
        }
        if comment:
            operation["description"] = comment
        if parameters:
            operation["parameters"] = parameters
        if body:
            operation["requestBody"] = self._request_body(method, body, path_fields)
        success = str(entry.http_status)
        out = self.ref(method.output_type, "out")
        content_doc = "The created resource." if entry.creates else "Success."
        if method.server_streaming:
            message = self._short(method.output_type)
            content_doc = STREAM_NOTE.format(message=message) + STREAM_OUTCOMES.get(method.name, "")
        media_type = STREAM_MEDIA_TYPE if method.server_streaming else "application/json"
        responses: dict[str, Any] = {
            success: {
                "description": content_doc,
                "content": {media_type: {"schema": out}},
            }
        }
        if method.server_streaming:
            # Not an OpenAPI 3.0 notion: a marker for tools (the fuzz test's hooks read it).
            responses[success]["x-stream"] = "newline-delimited"
        for code in ERRORS:
            if code == "409" and not entry.creates:
                continue
            if code == "413" and not body:
                continue
            responses[code] = {"$ref": f"#/components/responses/Error{code}"}
        operation["responses"] = responses
        return operation

    def _request_body(
        self, method: descriptor_pb2.MethodDescriptorProto, body: str, path_fields: list[str]
    ) -> dict[str, Any]:
        request = self.messages[method.input_type]
        if body == "*":
            # Every field not bound by the path. A path-bound field repeated in the body must
            # agree with the path (reject_binding_body_field_collisions).
            schema: dict[str, Any] = {"type": "object", "properties": {}}
            for fld in request.field:
                if fld.name in path_fields:
                    continue
                prop = _nullable(self.field_schema(fld, "in", method.input_type))
                if text := self.comments.get(f"{method.input_type}.{fld.name}"):
                    prop = _describe(prop, text)
                schema["properties"][fld.name] = prop
            if text := self.comments.get(method.input_type):
                schema["description"] = text
            if not schema["properties"]:
                schema["description"] = "No fields: the path says everything. May be empty."
            required = not path_fields and bool(schema["properties"])
            name = self._short(method.input_type)
            self.schemas[name] = schema
            ref = {"$ref": f"#/components/schemas/{name}"}
            return {"required": required, "content": {"application/json": {"schema": ref}}}
        fld = {f.name: f for f in request.field}[body]
        return {
            "required": True,
            "content": {
                "application/json": {"schema": self.field_schema(fld, "in", method.input_type)}
            },
        }

    def _field_doc(self, message: str, name: str) -> dict[str, str]:
        text = self.comments.get(f"{message}.{name}")
        return {"description": text} if text else {}

    def _add_links(
        self,
        paths: dict[str, dict[str, Any]],
        operations: list[tuple[str, str, str, descriptor_pb2.MethodDescriptorProto]],
    ) -> None:
        """OpenAPI links, for stateful clients and tools: an RPC returning a message with an
        `id` leads to every RPC whose path takes `{id}` and that returns the same message
        (CreateOrder -> GetOrder, PayOrder, ...)."""
        by_output: dict[str, list[tuple[str, str, str]]] = {}
        for path, verb, operation_id, method in operations:
            if "{id}" in path:
                by_output.setdefault(method.output_type, []).append((path, verb, operation_id))
        for path, verb, operation_id, method in operations:
            output = self.messages[method.output_type]
            if method.server_streaming or "id" not in {f.name for f in output.field}:
                continue
            targets = [t for t in by_output.get(method.output_type, []) if t[2] != operation_id]
            if not targets:
                continue
            responses = paths[path][verb]["responses"]
            success = next(code for code in responses if code.startswith("2"))
            responses[success]["links"] = {
                target_id: {
                    "operationId": target_id,
                    "parameters": {"id": "$response.body#/id"},
                }
                for _path, _verb, target_id in targets
            }


def _table_entry(name: str) -> Method:
    """The method table's entry for an RPC: its success status comes from there."""
    entry = METHODS.get(name)
    if entry is None:
        raise SystemExit(f"openapi: {name} is not in the method table (orders_client/methods.py)")
    return entry


def scalar_schema(kind: int, direction: str) -> dict[str, Any]:
    """One scalar as the proto3 JSON mapping renders it ("out"), accepts it in a body ("in"),
    or accepts it in a path or query string ("param")."""
    if kind in INT64_TYPES | UINT64_TYPES:
        low = INT64_MIN if kind in INT64_TYPES else 0
        high = INT64_MAX if kind in INT64_TYPES else 2**64 - 1
        pattern = r"^-?[0-9]+$" if kind in INT64_TYPES else r"^[0-9]+$"
        fmt = "int64" if kind in INT64_TYPES else "uint64"
        as_string = {"type": "string", "pattern": pattern}
        as_number = {"type": "integer", "format": fmt, "minimum": low, "maximum": high}
        if direction == "out":
            return {**as_string, "description": f"{fmt}, as a decimal string"}
        if direction == "param":
            return as_number
        return {"oneOf": [as_string, as_number], "description": f"{fmt}: a string or a number"}
    if kind in INT32_TYPES:
        return {"type": "integer", "format": "int32", "minimum": INT32_MIN, "maximum": INT32_MAX}
    if kind in UINT32_TYPES:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
    if kind == FDP.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FDP.TYPE_STRING:
        return {"type": "string"}
    if kind == FDP.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    if kind in (FDP.TYPE_DOUBLE, FDP.TYPE_FLOAT):
        return {"type": "number", "format": "double" if kind == FDP.TYPE_DOUBLE else "float"}
    raise ValueError(f"no JSON mapping for field type {kind}")


def _verb_and_template(rule: Any) -> tuple[str | None, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None, ""
    if kind == "custom":
        return rule.custom.kind.lower(), rule.custom.path
    return kind, getattr(rule, kind)


_VARIABLE = re.compile(r"\{([a-zA-Z0-9_.]+)(=[^}]*)?\}")


def openapi_path(template: str) -> tuple[str, list[str]]:
    """/api/orders/{id}/pay -> (/api/orders/{id}/pay/, ["id"]). The Django clients' trailing
    slash is the documented form; the transcoder matches both."""
    fields = [m.group(1) for m in _VARIABLE.finditer(template)]
    path = _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template)
    if ":" not in path.rsplit("/", 1)[-1] and not path.endswith("/"):
        path += "/"
    return path, fields


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A request field may be JSON null: the proto3 JSON mapping reads it as the default."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def _describe(schema: dict[str, Any], text: str) -> dict[str, Any]:
    if "$ref" in schema:  # OpenAPI 3.0 ignores siblings of $ref: wrap it
        return {"allOf": [schema], "description": text}
    return {**schema, "description": text}


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return sentence.rstrip(".")


def project_version() -> str:
    """The project's version (pyproject.toml): the API changes with the project."""
    with PYPROJECT.open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def _operation_id(verb: str, path: str) -> str:
    """OPTIONS /api/orders/{id}/pay/ -> OptionsApiOrdersIdPay."""
    words = [part.strip("{}") for part in path.split("/") if part]
    return verb.title() + "".join(word[:1].upper() + word[1:] for word in words)


def _add_head_and_options(path: str, item: dict[str, Any]) -> None:
    """What Envoy adds on every path (envoy.yaml): HEAD beside a GET, OPTIONS everywhere."""
    if "get" in item:
        get = item["get"]
        responses: dict[str, Any] = {}
        for code, response in get["responses"].items():
            text = response.get("description") or ERRORS.get(code, "")
            if "$ref" in response:
                text = ERRORS[code]
            described: dict[str, Any] = {"description": f"{text} (the status only: no body)"}
            if code == "200":
                described = {
                    "description": "The GET's status and headers, Content-Length included, and"
                    " no body.",
                    "headers": {
                        "Content-Length": {
                            "description": "The length of the GET's body.",
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    },
                }
            responses[code] = described
        head: dict[str, Any] = {
            "operationId": f"{get['operationId']}Head",
            "tags": list(get["tags"]),
            "summary": f"{get['summary']}: status and headers only",
            "description": f"HEAD of {get['operationId']}: what the GET answers, without the body.",
        }
        if "parameters" in get:
            head["parameters"] = copy.deepcopy(get["parameters"])
        head["responses"] = responses
        item["head"] = head
    path_parameters = [
        parameter
        for operation in item.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "path"
    ]
    # Envoy answers OPTIONS for any value of a path's variables: each is just a segment here.
    unique = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in dict.fromkeys(parameter["name"] for parameter in path_parameters)
    ]
    methods = [verb.upper() for verb in ("get", "head", "post") if verb in item]
    options: dict[str, Any] = {
        "operationId": _operation_id("options", path),
        "tags": list(next(iter(item.values()))["tags"]),
        "summary": "The methods this path answers",
        "description": f"Answered by Envoy: 204 with `Allow: {', '.join([*methods, 'OPTIONS'])}`."
        " Any other method on this path is a 405 with the same `Allow`"
        " (components/responses/Error405). A browser's CORS preflight from an allowed origin is"
        " answered by Envoy's CORS filter instead.",
        "security": [{}],
    }
    if unique:
        options["parameters"] = unique
    options["responses"] = {
        "204": {
            "description": "No body: the methods are in `Allow`.",
            "headers": {"Allow": copy.deepcopy(ALLOW_HEADER)},
        }
    }
    item["options"] = options


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {
        f"Error{code}": {
            "description": text,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}
            },
        }
        for code, text in ERRORS.items()
    }
    responses["Error405"] = {
        "description": METHOD_NOT_ALLOWED,
        "headers": {"Allow": copy.deepcopy(ALLOW_HEADER)},
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}
        },
    }
    return dict(sorted(responses.items(), key=lambda entry: entry[0]))


def render(descriptor_set_path: Path = DESCRIPTOR_SET) -> str:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set_path.read_bytes())
    generator = Generator(descriptor_set)
    document = generator.document()
    generator.ref(".google.rpc.Status", "out")  # every error body
    document["components"]["schemas"] = dict(sorted(generator.schemas.items()))
    document["components"]["responses"] = _error_responses()
    header = (
        "# Generated by scripts/openapi from the google.api.http routes in protos/ (through\n"
        "# gateway/orders.pb); do not edit. tests/reliability/test_openapi.py fails when stale.\n"
    )
    return header + yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail when docs/openapi.yaml is stale")
    group.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args(list(argv) if argv is not None else None)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current == text:
            print("openapi: docs/openapi.yaml is current")
            return 0
        sys.stderr.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                "docs/openapi.yaml (committed)",
                "docs/openapi.yaml (generated)",
                n=2,
            )
        )
        print("openapi: docs/openapi.yaml is stale; run scripts/openapi", file=sys.stderr)
        return 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"openapi: wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
