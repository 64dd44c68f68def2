"""Configuration from the environment: the one place that reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "load_settings"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    database_url: str
    grpc_host: str
    grpc_port: int
    grpc_workers: int
    shutdown_grace: float
    environment: str
    admin_token: str | None
    api_tokens: str
    seed_max_rows: int
    max_concurrent_seeds: int
    log_level: str

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def default_database_url() -> str:
    data = Path(os.environ.get("ORDERS_DATA_DIR", ROOT / "data"))
    data.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data / 'orders.sqlite3').resolve()}"


def load_settings() -> Settings:
    return Settings(
        database_url=os.environ.get("DATABASE_URL", "").strip() or default_database_url(),
        grpc_host=os.environ.get("ORDERS_GRPC_HOST", "127.0.0.1"),
        grpc_port=_int("ORDERS_GRPC_PORT", 50051),
        grpc_workers=_int("ORDERS_GRPC_WORKERS", 16),
        shutdown_grace=float(os.environ.get("ORDERS_SHUTDOWN_GRACE", "10")),
        environment=os.environ.get("ORDERS_ENV", "development").strip().lower() or "development",
        admin_token=os.environ.get("ORDERS_ADMIN_TOKEN") or None,
        api_tokens=os.environ.get("ORDERS_API_TOKENS", ""),
        seed_max_rows=_int("ORDERS_SEED_MAX_ROWS", 5_000_000),
        max_concurrent_seeds=max(1, _int("ORDERS_MAX_CONCURRENT_SEEDS", 2)),
        log_level=os.environ.get("ORDERS_LOG_LEVEL", "INFO").upper(),
    )
