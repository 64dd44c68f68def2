"""Tracing's configuration, without a server: off costs nothing, on follows the OTEL_*
variables in the server and in Envoy's rendering alike. (The spans themselves, through a real
Envoy and server: tests/gateway/test_gateway_tracing.py.)"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from harness import ROOT

from gateway.config import DESCRIPTOR_PATH, GatewayConfig, render
from gateway.envoy import validate
from server.tracing import enabled_by

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


def test_without_an_endpoint_nothing_of_opentelemetry_is_even_imported() -> None:
    code = (
        "import sys\n"
        "from server import tracing\n"
        "from server.transport import app, interceptor\n"
        "from server.storage import database, bulk\n"
        "from server.domain import seeding\n"
        "assert tracing.configure({}) is False and tracing.tracer is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_traces_are_on_with_an_otlp_endpoint_unless_disabled(
    env: dict[str, str], enabled: bool
) -> None:
    assert enabled_by(env) is enabled


def _tracing(env: dict[str, str]) -> dict[str, object] | None:
    config = yaml.safe_load(render(GatewayConfig.from_env("compose", env)))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    tracing = manager["typed_config"].get("tracing")
    assert (tracing is None) == ("opentelemetry_collector" not in clusters)
    return tracing  # type: ignore[no-any-return]


def test_envoy_traces_only_with_an_endpoint_and_to_it() -> None:
    assert _tracing({}) is None
    tracing = _tracing({**ENDPOINT, "OTEL_SERVICE_NAME": "shop"})
    assert tracing is not None
    otel = tracing["provider"]["typed_config"]  # type: ignore[index]
    assert otel["service_name"] == "shop-envoy"
    cluster = GatewayConfig.from_env("compose", ENDPOINT).trace_collector
    assert cluster == ("collector", 4317)


@pytest.mark.parametrize(
    ("sampler", "arg", "parent_based", "per_million"),
    [
        (None, None, True, None),  # parentbased_always_on, the SDK's default too
        ("parentbased_traceidratio", "0.01", True, 10_000),
        ("traceidratio", "0.25", False, 250_000),
        ("always_off", None, False, 0),
    ],
)
def test_envoy_samples_as_the_server_does(
    sampler: str | None, arg: str | None, parent_based: bool, per_million: int | None
) -> None:
    env = dict(ENDPOINT)
    if sampler:
        env["OTEL_TRACES_SAMPLER"] = sampler
    if arg:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    tracing = _tracing(env)
    assert tracing is not None
    chosen = tracing["provider"]["typed_config"]["sampler"]  # type: ignore[index]
    assert chosen["name"].endswith("parent_based") is parent_based
    if parent_based:
        chosen = chosen["typed_config"]["wrapped_sampler"]
    if per_million is None:
        assert chosen["name"].endswith("always_on")
    else:
        assert chosen["typed_config"]["sampling_percentage"]["numerator"] == per_million


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"},
        {**ENDPOINT, "OTEL_TRACES_SAMPLER": "jaeger_remote"},
        {**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
    ],
)
def test_a_setting_envoy_cannot_follow_is_an_error_naming_it(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="OTEL_"):
        GatewayConfig.from_env("local", env)


def test_compose_s_tracing_profile_is_a_collector_envoy_accepts_sending_to() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    collector = compose["services"]["otel-collector"]
    assert collector["profiles"] == ["tracing"]
    assert (ROOT / "otel-collector.yaml").is_file()
    # Both the server and Envoy's rendering get the variables from the shell.
    for name in ("server", "envoy-config"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in compose["services"][name]["environment"], name
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317"}
    config = dataclasses.replace(
        GatewayConfig.from_env("compose", env), descriptor_path=str(DESCRIPTOR_PATH)
    )
    assert config.trace_collector == ("otel-collector", 4317)
    validate(render(config))
