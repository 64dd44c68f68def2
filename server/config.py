"""Configuration from the environment: the one place that reads it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Settings",
    "data_dir",
    "grpc_processes",
    "load_settings",
    "socket_dir",
    "worker_sockets",
]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    database_url: str
    grpc_host: str
    grpc_port: int
    grpc_workers: int
    grpc_processes: int
    worker_index: int  # which process of a supervised group; -1 when not supervised
    socket_dir: Path
    shutdown_grace: float
    drain_seconds: float
    transaction_pooling: bool  # a pooler in transaction mode (PgBouncer) is in between
    environment: str
    admin_token: str | None
    api_tokens: str
    seed_max_rows: int
    max_concurrent_seeds: int
    max_message_bytes: int  # the largest request message a call may send
    log_level: str
    log_format: str
    metrics_host: str
    metrics_port: int
    # A hot standby for the read RPCs (None: every read on the primary), the replication lag
    # above which it is passed over, and how long a read waits for it to replay a client's
    # last write before the primary answers instead.
    read_database_url: str | None = None
    max_replica_lag: float = 1.0
    replica_wait: float = 0.1

    # Order events (WatchOrders): how often a server looks for new ones where no NOTIFY wakes
    # it, how long an idle stream waits before a heartbeat, how long events are kept, and
    # how many streams one process serves (each holds a thread of its own).
    event_poll_seconds: float = 0.1
    event_heartbeat_seconds: float = 5.0
    event_retention_seconds: float = 7 * 86400.0
    max_watchers: int = 64

    @property
    def socket_path(self) -> Path:
        """This process's Unix socket."""
        sockets = worker_sockets(self.socket_dir, self.grpc_port, self.grpc_processes)
        return sockets[max(self.worker_index, 0)]

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


def _int(name: str, default: int, env: Mapping[str, str] = os.environ) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def _seconds(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise SystemExit(f"{name} must be 0 or more seconds, got {raw!r}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    """Seconds, or a number with a unit: 45s, 30m, 12h, 7d."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    unit = _UNITS.get(raw[-1])
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SystemExit(f"{name} must be a positive duration (45s, 30m, 12h, 7d), got {raw!r}")
    return value


def data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the default SQLite file and the Unix sockets go: ORDERS_DATA_DIR; else `data/` of a
    source checkout this user may write (scripts/run); else a folder of the user's own, so that
    an installed server (site-packages, an image's /app) never writes among its code."""
    configured = env.get("ORDERS_DATA_DIR", "").strip()
    if configured:
        return Path(configured)
    if (ROOT / "pyproject.toml").is_file() and os.access(ROOT, os.W_OK | os.X_OK):
        return ROOT / "data"
    xdg = env.get("XDG_DATA_HOME", "").strip()
    try:
        home = Path(xdg) if xdg else Path.home() / ".local" / "share"
    except RuntimeError:  # no HOME and no entry in the password database
        home = None
    if home is not None and _may_create(home / "orders"):
        return home / "orders"
    # A system user without a home of its own (as in the image, which sets ORDERS_DATA_DIR).
    return Path(tempfile.gettempdir()) / f"orders-{os.getuid()}" / "data"


def _may_create(path: Path) -> bool:
    """Whether this user may create `path`: its nearest existing ancestor is writable."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def default_database_url() -> str:
    data = data_dir()
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(
            f"cannot create the data folder {data} ({exc.strerror}): set ORDERS_DATA_DIR to a"
            " folder this user may write, or DATABASE_URL"
        ) from None
    return f"sqlite:///{(data / 'orders.sqlite3').resolve()}"


def socket_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where each server process also listens on a Unix socket, for Envoy to balance over."""
    configured = env.get("ORDERS_SOCKET_DIR", "").strip()
    if configured:
        return Path(configured)
    return data_dir(env) / "sockets"


def grpc_processes(env: Mapping[str, str] = os.environ) -> int:
    return max(1, _int("ORDERS_GRPC_PROCESSES", os.cpu_count() or 1, env))


def worker_sockets(directory: Path, port: int, processes: int) -> list[Path]:
    """The Unix socket of each server process: the one place both the server and the gateway
    derive them from. A path too long for a socket address falls back to the temp folder."""
    paths = [directory / f"grpc-{port}-{i}.sock" for i in range(processes)]
    if any(len(str(path)) > 100 for path in paths):
        short = Path(tempfile.gettempdir()) / f"orders-{os.getuid()}"
        paths = [short / path.name for path in paths]
    return paths


def load_settings() -> Settings:
    return Settings(
        database_url=os.environ.get("DATABASE_URL", "").strip() or default_database_url(),
        grpc_host=os.environ.get("ORDERS_GRPC_HOST", "127.0.0.1"),
        grpc_port=_int("ORDERS_GRPC_PORT", 50051),
        grpc_workers=_int("ORDERS_GRPC_WORKERS", 16),
        grpc_processes=grpc_processes(),
        worker_index=_int("ORDERS_WORKER_INDEX", -1),
        socket_dir=socket_dir(),
        shutdown_grace=_seconds("ORDERS_SHUTDOWN_GRACE", 10.0),
        drain_seconds=_seconds("ORDERS_DRAIN_SECONDS", 2.0),
        transaction_pooling=os.environ.get("ORDERS_TRANSACTION_POOLING", "").strip().lower()
        in ("1", "true", "yes", "on"),
        environment=os.environ.get("ORDERS_ENV", "development").strip().lower() or "development",
        admin_token=os.environ.get("ORDERS_ADMIN_TOKEN") or None,
        api_tokens=os.environ.get("ORDERS_API_TOKENS", ""),
        seed_max_rows=_int("ORDERS_SEED_MAX_ROWS", 5_000_000),
        max_concurrent_seeds=max(1, _int("ORDERS_MAX_CONCURRENT_SEEDS", 2)),
        # Envoy's REST body cap: the largest valid request (an order of 1,000 items) is ~100 KB.
        max_message_bytes=max(1024, _int("ORDERS_MAX_MESSAGE_BYTES", 1_048_576)),
        log_level=os.environ.get("ORDERS_LOG_LEVEL", "INFO").upper(),
        log_format=os.environ.get("ORDERS_LOG_FORMAT", "json").strip().lower(),
        metrics_host=os.environ.get("ORDERS_METRICS_HOST", "127.0.0.1"),
        metrics_port=_int("ORDERS_METRICS_PORT", 9464),
        event_poll_seconds=max(0.01, _seconds("ORDERS_EVENT_POLL_SECONDS", 0.1)),
        event_heartbeat_seconds=max(0.05, _seconds("ORDERS_EVENT_HEARTBEAT_SECONDS", 5.0)),
        event_retention_seconds=_duration("ORDERS_EVENT_RETENTION", 7 * 86400.0),
        max_watchers=max(0, _int("ORDERS_MAX_WATCHERS", 64)),
        read_database_url=os.environ.get("ORDERS_READ_DATABASE_URL", "").strip() or None,
        max_replica_lag=_int("ORDERS_MAX_REPLICA_LAG_MS", 1000) / 1000,
        replica_wait=_int("ORDERS_REPLICA_WAIT_MS", 100) / 1000,
    )
