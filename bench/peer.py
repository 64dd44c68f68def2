"""The Django peer, driven through its own scripts: a folder with pg-up.sh (its PostgreSQL role
and database), django-up.sh (gunicorn in the background, on 127.0.0.1:8000 unless PEER_BIND
says otherwise; its venv is $PEERS_VENV, default /tmp/peers-venv), seed.py C O I and
django-down.sh. The benchmark only runs them; nothing here imports or copies the peer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

__all__ = ["DjangoPeer", "check_peer"]

SCRIPTS = ("pg-up.sh", "django-up.sh", "seed.py", "django-down.sh")
# The peer's database as its seed.py reads it (PEER_DSN): for counting its customers only.
DSN = "postgresql://peer:peer@127.0.0.1:5432/orders_peer"


def check_peer(folder: Path) -> None:
    missing = [name for name in SCRIPTS if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"--django {folder}: not the Django peer (missing {', '.join(missing)})")


class DjangoPeer:
    def __init__(self, folder: Path, log: Path) -> None:
        self.folder = folder.resolve()
        self.log = log
        self.running = False  # django-down.sh is owed
        host, _, port = os.environ.get("PEER_BIND", "127.0.0.1:8000").rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)

    def _run(self, name: str, *args: str, timeout: float) -> None:
        # The peer has a venv of its own: none of ours leaks into its scripts.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        ours = str(Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
        env["PEER_HOST"], env["PEER_PORT"] = self.host, str(self.port)
        venv = Path(env.get("PEERS_VENV", "/tmp/peers-venv"))
        command = [str(venv / "bin" / "python"), name] if name.endswith(".py") else [f"./{name}"]
        with self.log.open("a") as log:
            log.write(f"--- {name} {' '.join(args)}\n")
            log.flush()
            done = subprocess.run(
                [*command, *args],
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"the Django peer's {name} failed ({done.returncode}); see {self.log}"
            )

    def up(self) -> None:
        self._run("pg-up.sh", timeout=600)
        self.running = True  # from here on, django-down.sh at the end whatever happens
        self._run("django-up.sh", timeout=900)  # the first run creates its venv

    def seed(self, customers: int, orders: int, items: int) -> None:
        self._run("seed.py", str(customers), str(orders), str(items), timeout=900)

    def down(self) -> None:
        if self.running:
            self.running = False
            self._run("django-down.sh", timeout=60)

    def customers(self, substring: str) -> tuple[list[int], str]:
        """Its customers' ids, and how many of them an email search for `substring` matches
        ("?" when its database cannot be read: the ids are then 1..C, as seed.py numbers)."""
        with psycopg.connect(
            os.environ.get("PEER_DSN", DSN), autocommit=True, connect_timeout=5
        ) as conn:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM orders_customer")]
            row = conn.execute(
                "SELECT count(*) FROM orders_customer WHERE email ILIKE %s", (f"%{substring}%",)
            ).fetchone()
        return ids, f"{row[0] if row else '?'} of {len(ids)}"
