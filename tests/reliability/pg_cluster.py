"""A throwaway PostgreSQL cluster of a test's own, to kill and restart without touching the
machine's cluster: Debian's initdb and pg_ctl (/usr/lib/postgresql/<version>/bin), a data
folder in a temporary directory, a free port on 127.0.0.1, trust authentication, fsync off
(a crash of PostgreSQL, not of the machine, loses nothing committed).

PostgreSQL refuses to run as root: as root, every command runs as the `postgres` user through
runuser. `stop("immediate")` is the crash: every backend quits at once, nothing is flushed, and
the next start replays the WAL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from harness import free_port

__all__ = ["ClusterUnavailable", "ThrowawayCluster", "find_bin"]

PG_ROOT = Path("/usr/lib/postgresql")


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no postgres user to run them as root."""


def find_bin() -> Path:
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise ClusterUnavailable(f"no PostgreSQL server binaries under {PG_ROOT}/*/bin")
    return versions[-1]


class ThrowawayCluster:
    def __init__(self) -> None:
        self.bin = find_bin()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterUnavailable("running as root and there is no postgres user") from None
        self.folder = Path(tempfile.mkdtemp(prefix="orders-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgresql.log"
        if self.as_root:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.port = free_port()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\n{self.log_tail()}"
            )
        return done

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def start(self) -> None:
        # fsync=off is safe against a crash of PostgreSQL (the OS keeps what was written);
        # synchronous_commit stays on, or a crash would lose commits already acknowledged.
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip

    def standby(self) -> ThrowawayCluster:
        """A streaming hot standby of this running cluster, not started: pg_basebackup copies
        it and, with -R, writes standby.signal and the primary_conninfo to stream from."""
        standby = ThrowawayCluster()
        try:
            standby._run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
                timeout=120,
            )  # fmt: skip
        except BaseException:
            standby.destroy()
            raise
        return standby

    def execute(self, statement: str) -> object:
        """One statement on the `postgres` database; the first value of its first row."""
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(statement).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (every backend quits at once); `fast` a clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
