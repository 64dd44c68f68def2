"""Throwaway PostgreSQL databases (orders_bench_<random>_<label>, dropped at the end),
migrated by the service itself, and the CPU their backends use."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from .procs import ROOT, pid_cpu, say, server_env

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

__all__ = ["DEFAULT_ADMIN_URL", "BackendCpu", "BenchDatabases", "libpq", "migrate"]


def libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq connection string."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class BenchDatabases:
    """Databases named orders_bench_<random>_<label>, dropped by close()."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"orders_bench_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5)

    def check(self) -> str:
        with self._admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def create(self, label: str) -> str:
        name = f"{self.prefix}_{label}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return sa.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        if name in self.created:
            self._drop(name)
            self.created.remove(name)

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def close(self) -> None:
        for name in list(self.created):
            try:
                self._drop(name)
            except psycopg.Error as exc:
                say(f"could not drop {name}: {exc}")
        self.created.clear()


def migrate(database_url: str, log_path: Path) -> None:
    """`python -m server migrate`: the service's own migrations, for its database and the
    floor's alike."""
    env = server_env(database_url, 0)
    done = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    with log_path.open("a") as log:
        log.write(
            f"--- migrate {database_url} (exit {done.returncode})\n{done.stdout}{done.stderr}"
        )
    if done.returncode != 0:
        raise RuntimeError(f"python -m server migrate failed:\n{done.stdout}{done.stderr}")


class BackendCpu:
    """CPU seconds that PostgreSQL's backends of one database use over a block, read from
    /proc (PostgreSQL on this machine only; otherwise `used` stays None)."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url = admin_url
        self.database = database
        self.used: float | None = None
        self._before: dict[int, float] = {}

    def _pids(self) -> list[int]:
        host = sa.make_url(self.admin_url).host or "localhost"
        if host not in ("127.0.0.1", "localhost", "::1"):
            return []
        with psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5) as c:
            rows = c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def __enter__(self) -> BackendCpu:
        self._before = pid_cpu(self._pids())
        return self

    def __exit__(self, *exc: object) -> None:
        pids = self._pids()
        if not pids:
            return
        after = pid_cpu(pids)
        self.used = sum(v - self._before.get(p, 0.0) for p, v in after.items())
