"""A light HTTP/1.1 client for REST latencies (http.client, nothing else): the same client for
every service measured, so that what differs between two figures is the service.

`Fresh` opens a new TCP connection for every request and asks the server to close it
(`Connection: close`), as a client of gunicorn's sync workers gets anyway; `KeptAlive` sends
every request on one connection, opened again only when the server closed it. Both keep the
last answer so that a check can read it after the clock has stopped (bench/stats.py Case).
"""

from __future__ import annotations

import http.client
import json
from typing import Any

__all__ = ["Answer", "Fresh", "KeptAlive"]


class Answer:
    """One response: status, a header or two, the body."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        """The body as JSON; AssertionError unless the status was 200."""
        assert self.status == 200, f"HTTP {self.status}: {self.body[:200]!r}"
        return json.loads(self.body)


def _answer(response: http.client.HTTPResponse) -> Answer:
    body = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return Answer(response.status, body, headers)


class Fresh:
    """A new TCP connection for each GET."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.last: Answer | None = None

    def get(self, path: str) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            self.last = _answer(conn.getresponse())
        finally:
            conn.close()
        return self.last


class KeptAlive:
    """GETs on one HTTP/1.1 connection, kept open between requests."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.last: Answer | None = None
        self.reconnects = 0

    def get(self, path: str) -> Answer:
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        except (http.client.HTTPException, ConnectionError):
            # The server closed the idle connection: once more on a new one, counted.
            self.conn.close()
            self.reconnects += 1
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        self.last = _answer(response)
        if response.will_close:
            self.conn.close()
            self.reconnects += 1
        return self.last

    def close(self) -> None:
        self.conn.close()
