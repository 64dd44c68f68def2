"""The gateway: Envoy in front of the orders gRPC server, serving the REST/JSON API (through the
gRPC-JSON transcoder) and native gRPC on one port.

envoy.yaml at the top of the repository is the configuration, as a template; this package
renders it (``config``), runs Envoy (``envoy``), probes the server's health (``health``) and
runs the local stack behind scripts/run (``local_stack``). ``python -m gateway --help`` lists
the commands.
"""

from gateway.config import GatewayConfig, render
from gateway.envoy import Envoy, EnvoyError, validate

__all__ = ["Envoy", "EnvoyError", "GatewayConfig", "render", "validate"]
