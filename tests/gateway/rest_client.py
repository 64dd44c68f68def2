"""A REST caller of the gateway, on the standard library's http.client: one connection per
request (Envoy closes the connection after some of its own rejections), and a streaming read
that times each line as it arrives."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reply", "RestClient", "StreamedLine"]

Body = bytes | str | Mapping[str, Any] | None


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        assert self.content_type.startswith("application/json"), (
            f"expected a JSON body, got {self.content_type!r}: {self.body[:300]!r}"
        )
        return json.loads(self.body)

    def error(self, status: int) -> dict[str, Any]:
        """The JSON error body of a reply expected to have `status`: {code, message, ...}."""
        assert self.status == status, (
            f"expected HTTP {status}, got {self.status}: {self.body[:500]!r}"
        )
        body = self.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("code"), int) and body["code"] != 0, body
        assert isinstance(body.get("message"), str) and body["message"], body
        return body


@dataclass
class StreamedLine:
    arrived: float  # time.monotonic() when the line was read
    data: dict[str, Any]


@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    lines: list[StreamedLine] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0  # when the response body ended

    @property
    def last(self) -> dict[str, Any]:
        assert self.lines, "the stream had no line"
        return self.lines[-1].data


class RestClient:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    def _send(
        self, method: str, path: str, body: Body, headers: Mapping[str, str] | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        sent = {"content-type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        connection.request(method, path, body=data, headers=sent)
        return connection, connection.getresponse()

    def request(
        self, method: str, path: str, body: Body = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        connection, response = self._send(method, path, body, headers)
        try:
            payload = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)
        finally:
            connection.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body: Body = None, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("POST", path, {} if body is None else body, headers)

    def stream(self, path: str, body: Body, headers: Mapping[str, str] | None = None) -> Stream:
        """POSTs and reads a newline-delimited JSON response line by line, as it arrives."""
        started = time.monotonic()
        connection, response = self._send("POST", path, body, headers)
        try:
            result = Stream(
                response.status, {k.lower(): v for k, v in response.getheaders()}, started=started
            )
            for raw in _lines(response):
                result.lines.append(StreamedLine(time.monotonic(), json.loads(raw)))
            result.ended = time.monotonic()
            return result
        finally:
            connection.close()


def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        line = response.readline()
        if not line:
            return
        if line.strip():
            yield line
