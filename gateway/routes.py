"""The REST paths and their methods, read from the HTTP rules of the API (the google.api.http
options in protos/, compiled into gateway/orders.pb), and the Envoy routes made of them: for
each path, OPTIONS answered 204 with its `Allow` header, and any method the path does not have
answered 405 with the same header. The transcoder itself only knows "no rule matches": a 404
for a path it knows under another method.

One source: the rules the transcoder serves are the rules these routes describe, so a new RPC
with an HTTP rule gets its OPTIONS and 405 answers at the next render, with nothing to edit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

__all__ = [
    "TRANSCODED_SERVICES",
    "CorsSettings",
    "KnownPath",
    "allow_header",
    "api_enums",
    "cors_policy",
    "flow_lines",
    "http_rules",
    "known_paths",
    "lua_table",
    "method_routes",
]

# The services envoy.yaml's transcoder serves (its `services`, rendered from this).
TRANSCODED_SERVICES = ("orders.v1.OrdersService",)

# The order methods are listed in, in `Allow` and in CORS answers.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_FILTER_CORS = "envoy.filters.http.cors"
_CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
# The request headers a browser may send cross-origin besides the CORS-safelisted ones.
CORS_ALLOWED_HEADERS = (
    "content-type",
    "authorization",
    "idempotency-key",
    "x-request-id",
    "x-orders-min-lsn",
)
# Headers of a response a browser script may read besides the safelisted ones (a write's
# commit position included, for its next reads to send back).
CORS_EXPOSED_HEADERS = ("x-request-id", "allow", "x-orders-lsn")
# How long a browser may reuse a preflight answer: short enough that a changed origin list
# is seen within minutes.
CORS_MAX_AGE_SECONDS = 600

# The Lua filter's script that answers OPTIONS and 405 (envoy.yaml, `source_codes`), and
# where it reads the route's status, path and `Allow`.
_LUA_FILTER = "envoy.filters.http.lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
_BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
METHOD_ANSWERS_SCRIPT = "method_answers"

_VARIABLE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.]*)(?:=\*)?\}$")


@dataclass(frozen=True)
class HttpRule:
    """One binding of an RPC: its HTTP method and path template (`/api/orders/{id}`)."""

    method: str
    template: str
    rpc: str


@dataclass(frozen=True)
class KnownPath:
    """A path template and every method some rule answers on the paths it matches."""

    template: str
    segments: tuple[str | None, ...]  # a literal segment, or None for a variable
    methods: frozenset[str]

    @property
    def regex(self) -> str:
        """What Envoy matches the request path against (without its query string): the
        template, with or without a trailing slash, as the transcoder matches it."""
        parts = ["[^/]+" if s is None else re.escape(s) for s in self.segments]
        return "^/" + "/".join(parts) + "/?$"

    @property
    def allowed(self) -> tuple[str, ...]:
        """The methods the path answers: its rules' own, HEAD wherever GET is, and OPTIONS."""
        methods = set(self.methods) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        return _ordered(methods)


@dataclass(frozen=True)
class CorsSettings:
    """The origins a browser may call the API from (exact `scheme://host[:port]` strings)."""

    origins: tuple[str, ...] = ()


def allow_header(methods: Iterable[str]) -> str:
    return ", ".join(_ordered(methods))


def _ordered(methods: Iterable[str]) -> tuple[str, ...]:
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return tuple(sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m)))


@cache
def _descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def http_rules(
    descriptor_path: Path, services: Sequence[str] = TRANSCODED_SERVICES
) -> list[HttpRule]:
    """Every HTTP binding (additional bindings included) of the RPCs of `services`."""
    found: list[HttpRule] = []
    wanted = set(services)
    for file in _descriptor_set(descriptor_path).file:
        for service in file.service:
            if f"{file.package}.{service.name}" not in wanted:
                continue
            wanted.discard(f"{file.package}.{service.name}")
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    if kind is None:
                        continue
                    if kind == "custom":
                        verb, template = binding.custom.kind.upper(), binding.custom.path
                    else:
                        verb, template = kind.upper(), getattr(binding, kind)
                    found.append(HttpRule(verb, template, method.name))
    if wanted:
        raise ValueError(f"{descriptor_path} has no service {sorted(wanted)}")
    return found


def api_enums(
    descriptor_path: Path, services: Sequence[str] = TRANSCODED_SERVICES
) -> dict[str, list[str]]:
    """Full name -> value names of every enum in the files that define `services`: what an
    error about a bad enum value can list as the accepted values."""
    files = []
    for file in _descriptor_set(descriptor_path).file:
        if any(f"{file.package}.{s.name}" in services for s in file.service):
            files.append(file)
    found: dict[str, list[str]] = {}

    def collect(scope: str, messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            name = f"{scope}.{message.name}"
            for enum in message.enum_type:
                found[f"{name}.{enum.name}"] = [v.name for v in enum.value]
            collect(name, message.nested_type)

    for file in files:
        for enum in file.enum_type:
            found[f"{file.package}.{enum.name}"] = [v.name for v in enum.value]
        collect(file.package, file.message_type)
    return found


def lua_table(entries: dict[str, list[str]]) -> str:
    """A Lua table literal, name -> "A, B, C", on one line."""
    items = ", ".join(f"[{json.dumps(k)}] = {json.dumps(', '.join(v))}" for k, v in entries.items())
    return "{" + items + "}"


def _segments(template: str) -> tuple[str | None, ...]:
    if not template.startswith("/") or ":" in template:
        raise ValueError(f"HTTP rule path {template!r}: only /literal/{{variable}} paths")
    segments: list[str | None] = []
    for part in template.strip("/").split("/"):
        if _VARIABLE.match(part):
            segments.append(None)
        elif part and "{" not in part and "*" not in part:
            segments.append(part)
        else:
            # `**`, `{x=a/*}` and the like match other paths than one segment each: the
            # routes here would describe them wrongly, so refuse rather than guess.
            raise ValueError(f"HTTP rule path {template!r}: segment {part!r} is not supported")
    return tuple(segments)


def _contains(outer: tuple[str | None, ...], inner: tuple[str | None, ...]) -> bool:
    """Every path `inner` matches, `outer` matches too."""
    return len(outer) == len(inner) and all(
        o is None or o == i for o, i in zip(outer, inner, strict=True)
    )


def _overlap(a: tuple[str | None, ...], b: tuple[str | None, ...]) -> bool:
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


def known_paths(rules: Iterable[HttpRule]) -> list[KnownPath]:
    """One entry per path template, most specific first (Envoy takes the first route that
    matches), each with the methods of every rule whose template matches its paths:
    `/api/orders/summary` also answers what `/api/orders/{id}` does."""
    by_template: dict[tuple[str | None, ...], set[str]] = {}
    names: dict[tuple[str | None, ...], str] = {}
    for rule in rules:
        segments = _segments(rule.template)
        by_template.setdefault(segments, set()).add(rule.method)
        names.setdefault(segments, rule.template)
    templates = list(by_template)
    paths: list[KnownPath] = []
    for segments in templates:
        methods = set(by_template[segments])
        for other in templates:
            if other == segments:
                continue
            if _contains(other, segments):
                methods |= by_template[other]
            elif _overlap(other, segments) and not _contains(segments, other):
                # Two templates that share some paths but neither holds the other: a path in
                # both would need routes of its own. Not needed by this API; refused loudly.
                raise ValueError(
                    f"HTTP rule paths {names[segments]!r} and {names[other]!r} overlap in part"
                )
        paths.append(KnownPath(names[segments], segments, frozenset(methods)))
    # Literal segments before variables, left to right: a more specific template first.
    paths.sort(key=lambda p: tuple((s is None, s or "") for s in p.segments))
    return paths


def cors_policy(cors: CorsSettings, methods: Iterable[str]) -> dict[str, Any]:
    """The CORS filter's policy for `methods`: exact origins only."""
    return {
        "@type": _CORS_POLICY_TYPE,
        "allow_origin_string_match": [{"exact": origin} for origin in cors.origins],
        "allow_methods": allow_header(methods),
        "allow_headers": ", ".join(CORS_ALLOWED_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSED_HEADERS),
        "max_age": str(CORS_MAX_AGE_SECONDS),
    }


def method_routes(paths: Sequence[KnownPath], cors: CorsSettings) -> list[dict[str, Any]]:
    """Two Envoy routes per known path, in `paths`' order: OPTIONS -> 204 with `Allow`, and
    a method the path does not have -> 405 with `Allow` (its JSON body is made by envoy.yaml's
    local_reply_config, like Envoy's other errors).

    Envoy's own direct_response would answer them, but the transcoder, ahead of the router,
    answers first (a 404: it knows no rule for the method), and other filters (CORS) skip
    such routes: these are ordinary routes, and the Lua script METHOD_ANSWERS_SCRIPT answers
    them from their metadata before anything is sent upstream. Only requests to these routes
    run it."""
    routes: list[dict[str, Any]] = []
    for path in paths:
        allow = allow_header(path.allowed)
        for status in ("204", "405"):
            methods: list[dict[str, Any]]
            if status == "204":
                # An OPTIONS request; a browser's preflight from an allowed origin is answered
                # by the CORS filter before it gets here.
                methods = [{"name": ":method", "string_match": {"exact": "OPTIONS"}}]
            else:
                # Any method but the allowed ones (an exact comparison each, no regex).
                methods = [
                    {"name": ":method", "string_match": {"exact": m}, "invert_match": True}
                    for m in path.allowed
                ]
            per_filter: dict[str, Any] = {
                _LUA_FILTER: {
                    "@type": _LUA_PER_ROUTE,
                    "name": METHOD_ANSWERS_SCRIPT,
                },
                # Answered at the headers: a body sent with a wrong method is not waited for.
                "envoy.filters.http.buffer": {
                    "@type": _BUFFER_PER_ROUTE,
                    "disabled": True,
                },
            }
            if status == "204" and cors.origins:
                # A preflight on this path is answered with this path's methods.
                per_filter[_FILTER_CORS] = cors_policy(cors, path.allowed)
            routes.append(
                {
                    "name": f"{'OPTIONS' if status == '204' else status} {path.template}",
                    "match": {"safe_regex": {"regex": path.regex}, "headers": methods},
                    # Never sent upstream: the script answers first.
                    "route": {"cluster": "orders_grpc"},
                    "metadata": {
                        "filter_metadata": {
                            _LUA_FILTER: {"status": status, "allow": allow, "path": path.template}
                        }
                    },
                    "typed_per_filter_config": per_filter,
                }
            )
    return routes


def flow_lines(items: Iterable[Any]) -> str:
    """YAML block-sequence lines, one JSON value (valid YAML flow) per line: no YAML library
    is needed where the configuration is rendered (the server image has none)."""
    return "\n".join("- " + json.dumps(item, ensure_ascii=False) for item in items)
