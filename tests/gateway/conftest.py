"""Fixtures of the gateway tests: a real orders server (tests/harness.py) with a real Envoy in
front of it, rendered from envoy.yaml by the gateway package.

- `gateway` (SQLite only): for what Envoy does whatever the database (routing, transcoding,
  JSON errors, body cap, gRPC passthrough).
- `gateway_each_backend`: on SQLite and on PostgreSQL, through the root conftest's
  `server_factory` (so PostgreSQL follows its rules: CI=true fails when it is unreachable).
- `start_gateway(server)`: an Envoy in front of a server of the test's own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ROOT, OrdersServer, ServerFactory, SqliteDatabases

# This folder is named like the package it tests: make sure `import gateway` finds the package
# at the top of the repository first, not this folder as a namespace package.
sys.path.insert(0, str(ROOT))

from gateway_stack import Gateway, start_envoy


@pytest.fixture(scope="session")
def envoy_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envoy-logs")


@pytest.fixture(scope="session")
def start_gateway(envoy_logs: Path) -> Iterator[Callable[[OrdersServer], Gateway]]:
    gateways: list[Gateway] = []

    def start(server: OrdersServer) -> Gateway:
        gateway = Gateway(server, start_envoy(server.port, envoy_logs / f"envoy-{server.name}.log"))
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.envoy.stop()


@pytest.fixture(scope="session")
def sqlite_servers(
    tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[ServerFactory]:
    factory = ServerFactory(SqliteDatabases(tmp_path_factory.mktemp("gateway-sqlite")), log_dir)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def gateway(
    sqlite_servers: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    return start_gateway(sqlite_servers.start("gateway"))


@pytest.fixture(scope="session")
def gateway_each_backend(
    server_factory: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    return start_gateway(server_factory.start("gateway"))
