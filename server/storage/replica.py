"""A read replica (a PostgreSQL hot standby) beside the primary: which reads it may answer,
and how far behind the primary it is.

A read goes to the replica when the replica is reachable, its measured lag is within the
bound, and, when the caller sent the position of its last write, it has replayed that far
(waiting a short, bounded while for it); otherwise the primary answers. A read that fails on
the replica is answered by the primary (Database.read), and the replica is passed over until
the monitor reaches it again.

The monitor thread samples, every MONITOR_INTERVAL, the primary's WAL position and the
replica's replay position. The lag is the time since the primary was first seen at a position
the replica has not replayed yet: zero while it keeps up, growing while replay is paused, slow,
or cut off from the primary, whatever the primary's write rate. Its resolution is the interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import psycopg

from ..observability import REPLICA_FALLBACKS, REPLICA_LAG

__all__ = ["MONITOR_INTERVAL", "UNKNOWN_POSITION", "Replica", "format_lsn", "parse_lsn"]

log = logging.getLogger("orders.replica")

MONITOR_INTERVAL = 0.25
# What a position the caller sent but nobody could read stands for: beyond any replica, so
# the primary answers at once.
UNKNOWN_POSITION = 1 << 64
# A probe gives up quickly: a replica that does not answer within this is down for reads.
_PROBE_TIMEOUT_SECONDS = 1
_SAMPLES = 4096  # the primary's positions kept (minutes at MONITOR_INTERVAL)
# Where the replica has replayed to; on a server that is not a standby (a read URL that names
# a primary), where it has written to. coalesce evaluates the second only when needed.
REPLAYED_SQL = "SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text"
_WRITTEN_SQL = "SELECT pg_current_wal_lsn()::text"


def parse_lsn(text: str) -> int:
    """A WAL position as PostgreSQL writes it (`16/B374D848`) -> a comparable integer."""
    high, _, low = text.strip().partition("/")
    if not high or not low:
        raise ValueError(f"not a WAL position: {text!r}")
    value = (int(high, 16) << 32) + int(low, 16)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"not a WAL position: {text!r}")
    return value


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class _Probe:
    """One connection of the monitor's own, opened again after any failure."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._connection: psycopg.Connection[Any] | None = None

    def lsn(self, sql: str) -> int:
        if self._connection is None or self._connection.closed:
            # Bounded by the network, not by server settings: a pooler (PgBouncer) refuses
            # the `options` startup parameter, and its connections are not the monitor's own.
            self._connection = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=_PROBE_TIMEOUT_SECONDS,
                prepare_threshold=None,  # a pooler in transaction mode may be in between
                keepalives=1,
                keepalives_idle=1,
                keepalives_interval=1,
                keepalives_count=1,
                tcp_user_timeout=2000 * _PROBE_TIMEOUT_SECONDS,
            )
        try:
            row = self._connection.execute(sql).fetchone()
        except psycopg.Error:
            self.close()
            raise
        assert row is not None and row[0] is not None
        return parse_lsn(str(row[0]))

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                pass
            self._connection = None


class Replica:
    """The replica's state as the read path sees it: `reachable`, `lag` (seconds), `replayed`
    (the highest replay position seen), kept current by `start()`'s monitor thread."""

    def __init__(
        self, primary_conninfo: str, replica_conninfo: str, max_lag: float, wait: float
    ) -> None:
        self.max_lag = max_lag
        self.wait = wait
        self.reachable = False  # until the first probe answers
        self.lag = 0.0
        self.replayed = 0
        self._primary = _Probe(primary_conninfo)
        self._replica = _Probe(replica_conninfo)
        self._samples: deque[tuple[float, int]] = deque(maxlen=_SAMPLES)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._fallback_counters = {
            reason: REPLICA_FALLBACKS.labels(reason) for reason in ("down", "lag", "lsn", "error")
        }

    # The read path.

    def refusal(self, min_lsn: int | None) -> str | None:
        """Why a read may not go to the replica now (None: it may; "lsn" means it may once the
        replica has replayed `min_lsn`, which the caller then waits for on its connection)."""
        if not self.reachable:
            return "down"
        if self.lag > self.max_lag:
            return "lag"
        if min_lsn is not None and min_lsn > self.replayed:
            return "lsn"
        return None

    def may_reach(self, min_lsn: int) -> bool:
        """Whether waiting for the replica to replay `min_lsn` can end well."""
        return min_lsn < UNKNOWN_POSITION

    def saw_replayed(self, lsn: int) -> None:
        if lsn > self.replayed:
            self.replayed = lsn

    def failed(self, error: BaseException) -> None:
        """A read failed on the replica: pass it over until the monitor reaches it again."""
        if self.reachable:
            log.warning("read replica failed; the primary answers: %s", _first_line(error))
        self.reachable = False

    def fallback(self, reason: str) -> None:
        self._fallback_counters[reason].inc()

    # The monitor.

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replica-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _PROBE_TIMEOUT_SECONDS + MONITOR_INTERVAL)
        self._primary.close()
        self._replica.close()

    def _run(self) -> None:
        while True:
            self.check()
            if self._stopping.wait(MONITOR_INTERVAL):
                return

    def check(self) -> None:
        """One sample: the primary's position first, then the replica's replay position, so
        that a replica keeping up is never seen behind."""
        now = time.monotonic()
        try:
            self._samples.append((now, self._primary.lsn(_WRITTEN_SQL)))
        except psycopg.Error:
            pass  # the primary away: the lag is measured against what was seen of it
        try:
            replayed = self._replica.lsn(REPLAYED_SQL)
        except (psycopg.Error, ValueError, AssertionError) as error:
            if self.reachable:
                log.warning("read replica unreachable: %s", _first_line(error))
            self.reachable = False
            return
        self.saw_replayed(replayed)
        samples = self._samples
        while len(samples) > 1 and samples[0][1] <= replayed:
            samples.popleft()
        behind = bool(samples) and samples[0][1] > replayed
        self.lag = time.monotonic() - samples[0][0] if behind else 0.0
        REPLICA_LAG.set(self.lag)
        if not self.reachable:
            log.info("read replica reachable (lag %.3f s)", self.lag)
        self.reachable = True


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
