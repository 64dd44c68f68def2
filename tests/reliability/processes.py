"""The processes of one server: `python -m server serve` may be a supervisor with worker
processes (ORDERS_GRPC_PROCESSES), so "kill the server" means every one of them, by PID."""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["descendants", "kill_tree"]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    children = _children()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL to `pid` and everything under it, all at once: the root is stopped first so
    that it can neither restart a worker nor hand it a gentler signal. Returns the PIDs."""
    os.kill(pid, signal.SIGSTOP)
    tree = descendants(pid)
    for child in tree:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(pid, signal.SIGKILL)
    return [pid, *tree]
