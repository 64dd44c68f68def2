"""The local run behind scripts/run: the gRPC server and Envoy in front of it, in the foreground.

Both children run in their own process sessions, so a Ctrl-C reaches this process only and the
shutdown keeps its order: Envoy first (no new requests), then the server (graceful stop). On
Linux each child is also told to receive SIGTERM if this process dies without cleaning up (a
SIGKILL), so that nothing is left running in any case.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from types import FrameType

from gateway.config import ROOT, GatewayConfig
from gateway.envoy import Envoy, EnvoyError
from gateway.health import wait_until_serving

__all__ = ["run"]

_PR_SET_PDEATHSIG = 1
SERVER_STOP_GRACE_SECONDS = 15.0


def run(environ: Mapping[str, str] | None = None) -> int:
    """Starts the server and Envoy, waits until both are ready, prints the URLs, and stays in
    the foreground until SIGINT or SIGTERM (or until either child exits). Returns the exit code."""
    env = dict(os.environ if environ is None else environ)
    # Envoy balances over every server process's Unix socket (ORDERS_GRPC_PROCESSES).
    try:
        config = GatewayConfig.from_env("local", env).with_server_processes(env)
    except ValueError as error:  # a setting from the environment: say which, no traceback
        _say(f"orders service did not start: {error}")
        return 2
    grpc_target = f"{config.upstream_host}:{config.upstream_port}"
    env.setdefault("ORDERS_GRPC_PORT", str(config.upstream_port))
    # Envoy is stopped before the server, so no balancer is left to notice a drain: Ctrl-C
    # need not wait for one (ORDERS_DRAIN_SECONDS, docs/operations.md).
    env.setdefault("ORDERS_DRAIN_SECONDS", "0")

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    server = subprocess.Popen(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    envoy = Envoy(config, preexec_fn=_die_with_parent)

    def child_exited() -> bool:
        return server.poll() is not None or envoy.poll() is not None

    try:
        for target in [grpc_target, *(f"unix:{path}" for path in config.upstream_sockets)]:
            wait_until_serving(
                target, should_stop=lambda: stopping.is_set() or server.poll() is not None
            )
        envoy.start()
        envoy.wait_ready(should_stop=lambda: stopping.is_set() or child_exited())
        _say(
            "orders service is up (Ctrl-C stops it):\n"
            f"  REST      {config.rest_url}/api/orders/\n"
            f"  gRPC      {config.rest_url.removeprefix('http://')}  (through Envoy, plaintext;"
            f" grpcurl -plaintext {config.rest_url.removeprefix('http://')} list)\n"
            f"  gRPC      {grpc_target}  (the server itself)\n"
            f"  admin     {config.admin_url}/  (Envoy)"
        )
        while not stopping.wait(0.2):
            if child_exited():
                break
    except (InterruptedError, TimeoutError, EnvoyError) as error:
        if not stopping.is_set():
            _say(f"orders service did not start: {error}")
    finally:
        envoy_code = envoy.stop()
        server_code = _stop_server(server)
    if stopping.is_set():
        _say("orders service stopped")
        return 0
    _say(f"orders service stopped: server exit code {server_code}, envoy exit code {envoy_code}")
    return 1


def _stop_server(server: subprocess.Popen[bytes]) -> int:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            return server.wait(SERVER_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
    return server.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
