"""schemathesis hooks for docs/openapi.yaml (loaded by `st run` through SCHEMATHESIS_HOOKS).

Seed answers a stream: newline-delimited JSON, one SeedResponse a line, under the content type
application/x-ndjson (the document marks such a response with `x-stream: newline-delimited`).
A plain JSON parser would call it malformed, so:

- the JSON deserializer hands schemathesis the LAST line of such a stream (the outcome), which
  its response_schema_conformance check validates like any response;
- `ndjson_stream_conformance` validates EVERY line against the schema, and checks the stream's
  shape: a PHASE_STARTED line first, exactly one `"done": true` line and it is the last one,
  ending in PHASE_DONE, or PHASE_FAILED with an error that is not UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
import yaml

DOCUMENT = Path(os.environ.get("ORDERS_OPENAPI", Path(__file__).parents[2] / "docs/openapi.yaml"))


def _stream_schema_ref(operation: Any, status: int) -> str | None:
    """The $ref of the line schema when `status` of `operation` is a newline-delimited stream."""
    response = operation.definition.raw.get("responses", {}).get(str(status))
    if not isinstance(response, dict) or response.get("x-stream") != "newline-delimited":
        return None
    (content,) = response["content"].values()
    return str(content["schema"]["$ref"])


def _lines(response: Any) -> list[Any]:
    text = response.content.decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@schemathesis.deserializer("application/json", "application/x-ndjson")
def json_or_stream(ctx: Any, response: Any) -> Any:
    if _stream_schema_ref(ctx.operation, response.status_code) is None:
        return response.json()
    lines = _lines(response)
    if not lines:
        raise ValueError("an empty stream: not even the first progress line")
    return lines[-1]


@cache
def _validator(ref: str) -> Any:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return jsonschema_rs.validator_for({"$ref": ref, "components": document["components"]})


@schemathesis.check
def ndjson_stream_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    ref = _stream_schema_ref(case.operation, response.status_code)
    if ref is None:
        return None
    lines = _lines(response)
    validator = _validator(ref)
    for number, line in enumerate(lines, 1):
        errors = [e.message for e in validator.iter_errors(line)]
        if errors:
            raise AssertionError(f"stream line {number} does not conform: {errors[:3]}: {line}")
    assert lines, "an empty stream"
    assert lines[0].get("phase") == "PHASE_STARTED", f"first line: {lines[0]}"
    done = [i for i, line in enumerate(lines) if line.get("done")]
    assert done == [len(lines) - 1], f"'done' on lines {done} of {len(lines)}: the last only"
    last = lines[-1]
    assert last.get("phase") in ("PHASE_DONE", "PHASE_FAILED"), f"last line: {last}"
    if last["phase"] == "PHASE_FAILED":
        code = last.get("error", {}).get("code")
        assert code, f"a failed stream must say why: {last}"
        # What a 5xx is to a plain response: the server failed, not the request.
        assert code not in (2, 13), f"the stream ended in UNKNOWN or INTERNAL: {last}"
    return True
