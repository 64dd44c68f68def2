"""A PgBouncer of the tests' own, in transaction mode, in front of a PostgreSQL server: Debian's
`pgbouncer`, installed with apt-get when missing (as the bench installs wrk), on a free port of
127.0.0.1, with a configuration and a log in a temporary folder.

Every database name is passed through to the server as the user `postgres` (`* = ...` with
`auth_type = any`), so the databases the tests create there are reachable through it at once.
PgBouncer refuses to run as root: as root it runs as the `postgres` user through runuser, as
the clusters of pg_cluster.py do.

`PgBouncerDatabases` is PostgresDatabases (harness.py) whose databases are reached through a
PgBouncer: created and migrated on the server itself, then served through the pooler, with
ORDERS_TRANSACTION_POOLING=1 for the servers over them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from harness import ROOT, PostgresDatabases, free_port

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stack import ensure_tool

__all__ = ["PgBouncer", "PgBouncerDatabases", "PgBouncerUnavailable", "find_pgbouncer"]

_DEBIAN_PATH = Path("/usr/sbin/pgbouncer")
_START_TIMEOUT = 10.0


class PgBouncerUnavailable(RuntimeError):
    """No pgbouncer binary and no way to install it, or no postgres user to run it as root."""


def find_pgbouncer(install: bool = True) -> str:
    """The pgbouncer binary, installed from Debian's package when missing and `install`."""
    for found in (shutil.which("pgbouncer"), str(_DEBIAN_PATH) if _DEBIAN_PATH.exists() else None):
        if found:
            return found
    installed = ensure_tool("pgbouncer", "pgbouncer", install)
    if installed is None and _DEBIAN_PATH.exists():  # /usr/sbin is not on every PATH
        installed = str(_DEBIAN_PATH)
    if installed is None:
        raise PgBouncerUnavailable("pgbouncer is not installed and apt-get could not install it")
    return installed


class PgBouncer:
    """`start()`, `stop()`, `start()` again on the same port (as ThrowawayCluster does, so that
    the fault tests drive either); `destroy()` at the end, whatever happened."""

    def __init__(self, server_host: str, server_port: int) -> None:
        self.binary = find_pgbouncer()
        self.as_root = os.geteuid() == 0
        self.folder = Path(tempfile.mkdtemp(prefix="orders-pgbouncer-"))
        if self.as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise PgBouncerUnavailable(
                    "running as root and there is no postgres user"
                ) from None
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        self.log = self.folder / "pgbouncer.log"
        self.config = self.folder / "pgbouncer.ini"
        self.config.write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port} user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            # Each test database is a pool of its own; a few server connections each keep
            # the sum under the test server's max_connections.
            "default_pool_size = 4\n"
            "max_client_conn = 2000\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.folder / 'pgbouncer.pid'}\n"
        )
        self.config.chmod(0o644)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        command = [self.binary, str(self.config)]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.process.returncode}\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"pgbouncer not listening after {_START_TIMEOUT:.0f}s\n{self.log_tail()}"
        )

    def _pid(self) -> int | None:
        """PgBouncer's own pid (under runuser, the child of the process started)."""
        try:
            return int((self.folder / "pgbouncer.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` (SIGTERM): every client and server connection is closed at once, as in
        a crash of the pooler; otherwise (SIGINT) it waits for the transactions in flight."""
        if self.process is None:
            return
        pid = self._pid()
        if pid is not None and self.process.poll() is None:
            try:
                os.kill(pid, signal.SIGTERM if mode == "immediate" else signal.SIGINT)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class PgBouncerDatabases(PostgresDatabases):
    """Fresh databases of PostgresDatabases, served through a PgBouncer in transaction mode."""

    label = "pgbouncer"
    server_env: Mapping[str, str] = {"ORDERS_TRANSACTION_POOLING": "1"}

    def __init__(self, admin_url: str) -> None:
        super().__init__(admin_url)
        url = sa.make_url(admin_url)
        self.pgbouncer = PgBouncer(url.host or "127.0.0.1", url.port or 5432)
        self.pgbouncer.start()

    def create(self) -> str:
        direct = super().create()
        return self.pgbouncer.url(str(sa.make_url(direct).database))

    def direct_url(self, url: str) -> str:
        """The URL of one of these databases on the server itself, not through the pooler."""
        return self._url(str(sa.make_url(url).database))

    def close(self) -> None:
        try:
            self.pgbouncer.destroy()
        finally:
            super().close()
