"""The Envoy configuration as rendered for a local run and for docker-compose, and the compose
file and Dockerfile around it: what can be checked without Docker."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gateway_stack import Gateway
from harness import ROOT

from gateway import GatewayConfig, render
from gateway.config import COMPOSE_DESCRIPTOR_PATH, DESCRIPTOR_PATH
from gateway.envoy import validate
from gateway.routes import HttpRule, http_rules, known_paths

COMPOSE_FILE = ROOT / "docker-compose.yml"
RENDER_ENV = {
    "ORDERS_HTTP_PORT",
    "ORDERS_ENVOY_ADMIN_PORT",
    "ORDERS_GRPC_PORT",
    "ORDERS_UPSTREAM_HOST",
    "ORDERS_CORS_ORIGINS",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RENDER_ENV}
    env.update(extra)
    return env


@pytest.mark.parametrize("variant", ["local", "compose"])
def test_rendered_config_passes_envoy_validate(variant: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", "--variant", variant],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"envoy accepts the {variant} configuration" in done.stdout


def addresses(text: str) -> list[tuple[str, str]]:
    return re.findall(r"socket_address: \{address: ([^,]+), port_value: (\d+)\}", text)


def test_local_rendering_follows_the_ports_and_binds_loopback_only() -> None:
    config = GatewayConfig.from_env(
        "local",
        {
            "ORDERS_HTTP_PORT": "18081",
            "ORDERS_ENVOY_ADMIN_PORT": "19902",
            "ORDERS_GRPC_PORT": "15052",
        },
    )
    text = render(config)
    assert re.search(r"\$\{[a-z_]+\}", text) is None
    assert sorted(addresses(text)) == sorted(
        [("127.0.0.1", "19902"), ("127.0.0.1", "18081"), ("127.0.0.1", "15052")]
    )
    assert f'proto_descriptor: "{DESCRIPTOR_PATH}"' in text and DESCRIPTOR_PATH.exists()


def test_defaults_are_the_contract_ports() -> None:
    config = GatewayConfig.from_env("local", {})
    assert (config.http_port, config.admin_port, config.upstream_port) == (8080, 9901, 50051)


def test_compose_rendering_faces_the_network_and_reaches_the_server_service() -> None:
    text = render(GatewayConfig.from_env("compose", {}))
    assert sorted(addresses(text)) == sorted(
        [("127.0.0.1", "9901"), ("0.0.0.0", "8080"), ("server", "50051")]
    )
    assert f'proto_descriptor: "{COMPOSE_DESCRIPTOR_PATH}"' in text


@pytest.mark.parametrize("value", ["http", "0", "70000", "-1"])
def test_a_bad_port_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="ORDERS_HTTP_PORT"):
        GatewayConfig.from_env("local", {"ORDERS_HTTP_PORT": value})


def test_render_refuses_a_placeholder_without_value_or_a_value_without_placeholder() -> None:
    template = (ROOT / "envoy.yaml").read_text()
    with pytest.raises(ValueError, match="no value"):
        render(GatewayConfig(), template + "\n# ${nonsense}\n")
    with pytest.raises(ValueError, match="lacks placeholders"):
        render(GatewayConfig(), template.replace("${admin_port}", "9901"))


# -- docker-compose.yml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        message = "PyYAML is needed to parse docker-compose.yml (the dev extras must list pyyaml)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    parsed = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(parsed, dict)
    return parsed


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def test_compose_references_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / (
                service["build"]
                if isinstance(service["build"], str)
                else service["build"]["context"]
            )
            assert (context / "Dockerfile").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_compose_runs_postgres_migrations_server_and_envoy_in_order(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)
    assert svc["db"]["image"] == "postgres:15"
    assert svc["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    assert svc["migrate"]["command"] == ["python", "-m", "server", "migrate"]
    assert svc["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert svc["server"]["command"] == ["python", "-m", "server", "serve"]
    assert svc["server"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert (
        svc["envoy"]["depends_on"]["envoy-config"]["condition"] == "service_completed_successfully"
    )
    assert svc["envoy"]["depends_on"]["server"]["condition"] == "service_healthy"
    for name in ("db", "server", "envoy"):
        assert svc[name]["healthcheck"]["test"], f"{name} has no health check"
    environment = svc["server"]["environment"]
    assert environment["ORDERS_ENV"] == "production"
    assert environment["ORDERS_ADMIN_TOKEN"].startswith("${ORDERS_ADMIN_TOKEN:?"), (
        "the token must be required"
    )
    assert environment["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environment["ORDERS_GRPC_HOST"] == "0.0.0.0"  # reachable from the Envoy container
    for name in ("server", "envoy"):
        for port in svc[name].get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback"


def test_compose_envoy_reads_the_configuration_rendered_for_it(compose: dict[str, Any]) -> None:
    svc = services(compose)
    render_job, envoy = svc["envoy-config"], svc["envoy"]
    command = render_job["command"]
    assert command[:4] == ["python", "-m", "gateway", "render"]
    assert command[command.index("--variant") + 1] == "compose"
    rendered = command[command.index("--output") + 1]
    assert envoy["command"][envoy["command"].index("-c") + 1] == rendered
    volume_of = {v.split(":")[1]: v.split(":")[0] for v in envoy["volumes"]}
    assert volume_of[COMPOSE_DESCRIPTOR_PATH] == "./gateway/orders.pb"
    config_dir = str(Path(rendered).parent)
    assert volume_of[config_dir] in {
        v.split(":")[0] for v in render_job["volumes"] if v.endswith(config_dir)
    }
    # What the job renders with its environment is a configuration Envoy accepts.
    environment = {k: _compose_default(str(v)) for k, v in render_job["environment"].items()}
    assert "ORDERS_CORS_ORIGINS" in environment, "the CORS origins must reach the rendering"
    config = GatewayConfig.from_env("compose", environment)
    assert (config.upstream_host, config.upstream_port, config.http_port) == ("server", 50051, 8080)
    from gateway import validate

    validate(render(dataclasses.replace(config, descriptor_path=str(DESCRIPTOR_PATH))))


def _compose_default(value: str) -> str:
    """A compose value with its `${VAR:-default}` references read as their defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_health_checks_work_against_a_running_stack(
    compose: dict[str, Any], gateway: Gateway
) -> None:
    """The health check commands, pointed at this test's server and Envoy, succeed."""
    svc = services(compose)
    server_check = [
        sys.executable if part == "python" else part.replace("50051", str(gateway.server.port))
        for part in svc["server"]["healthcheck"]["test"][1:]
    ]
    done = subprocess.run(server_check, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (server_check, done.stderr)
    envoy_check = [
        p.replace("9901", str(gateway.config.admin_port))
        for p in svc["envoy"]["healthcheck"]["test"][1:]
    ]
    done = subprocess.run(envoy_check, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (shlex.join(envoy_check), done.stderr)


def test_dockerfile_copies_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert 'CMD ["python", "-m", "server", "serve"]' in dockerfile


def test_a_local_run_balances_over_every_server_process_socket() -> None:
    env = {"ORDERS_GRPC_PORT": "15053", "ORDERS_GRPC_PROCESSES": "3", "ORDERS_SOCKET_DIR": "/run/o"}
    text = render(GatewayConfig.from_env("local", env).with_server_processes(env))
    assert "type: STATIC" in text
    assert re.findall(r'pipe: \{path: "([^"]+)"\}', text) == [
        f"/run/o/grpc-15053-{i}.sock" for i in range(3)
    ]
    validate(text)  # Envoy accepts pipe endpoints in a STATIC cluster


# -- CORS origins -----------------------------------------------------------------------------


def test_cors_origins_are_read_from_the_environment() -> None:
    assert GatewayConfig.from_env("local", {}).cors_origins == ()
    assert GatewayConfig.from_env("local", {"ORDERS_CORS_ORIGINS": " , "}).cors_origins == ()
    config = GatewayConfig.from_env(
        "compose",
        {"ORDERS_CORS_ORIGINS": "http://localhost:3000, HTTPS://App.example.com:8443,"},
    )
    assert config.cors_origins == ("http://localhost:3000", "https://app.example.com:8443")


@pytest.mark.parametrize(
    "value", ["*", "localhost:3000", "http://localhost:3000/", "https://a.example.com/app", "x"]
)
def test_a_cors_origin_that_is_not_one_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="ORDERS_CORS_ORIGINS"):
        GatewayConfig.from_env("local", {"ORDERS_CORS_ORIGINS": f"http://ok.example.com,{value}"})


def test_render_names_a_bad_setting_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "render"],
        cwd=ROOT,
        env=clean_env(ORDERS_CORS_ORIGINS="https://shop.example.com/app"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "ORDERS_CORS_ORIGINS" in done.stderr, done.stderr


def test_scripts_run_refuses_a_bad_setting_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.local_stack import run

    assert run({"ORDERS_CORS_ORIGINS": "*"}) == 2
    assert "did not start: ORDERS_CORS_ORIGINS" in capsys.readouterr().err


def test_cors_is_rendered_only_for_configured_origins() -> None:
    plain = render(GatewayConfig())
    assert "typed_per_filter_config: {}" in plain and "allow_origin_string_match" not in plain
    text = render(GatewayConfig(cors_origins=("http://localhost:3000",)))
    assert '"allow_origin_string_match": [{"exact": "http://localhost:3000"}]' in text
    validate(text)  # Envoy accepts the policies, the virtual host's and each path's


# -- The routes derived from the HTTP rules ---------------------------------------------------


def test_every_rest_path_gets_an_options_and_a_405_route() -> None:
    paths = known_paths(http_rules(DESCRIPTOR_PATH))
    templates = [p.template for p in paths]
    assert len(templates) == len(set(templates)) == 11, templates
    # The literals /api/orders/summary and /api/orders/events must be matched before
    # /api/orders/{id}.
    for literal in ("/api/orders/summary", "/api/orders/events"):
        assert templates.index(literal) < templates.index("/api/orders/{id}")
    by_template = {p.template: p for p in paths}
    assert by_template["/api/orders"].allowed == ("GET", "HEAD", "POST", "OPTIONS")
    assert by_template["/api/orders/{id}/pay"].allowed == ("POST", "OPTIONS")
    assert by_template["/api/orders/{id}"].regex == "^/api/orders/[^/]+/?$"
    text = render(GatewayConfig())
    for template in templates:
        assert f'"name": "OPTIONS {template}"' in text and f'"name": "405 {template}"' in text


def test_a_literal_path_gets_the_methods_of_the_templates_that_also_match_it() -> None:
    paths = known_paths(
        [
            HttpRule("GET", "/v/items/{id}", "GetItem"),
            HttpRule("DELETE", "/v/items/{id}", "DeleteItem"),
            HttpRule("POST", "/v/items/export", "Export"),
        ]
    )
    assert [(p.template, p.allowed) for p in paths] == [
        ("/v/items/export", ("GET", "HEAD", "POST", "DELETE", "OPTIONS")),
        ("/v/items/{id}", ("GET", "HEAD", "DELETE", "OPTIONS")),
    ]


@pytest.mark.parametrize(
    "rules",
    [
        [HttpRule("GET", "/v/{name=**}", "Any")],
        [HttpRule("GET", "/v/{name=shelves/*}", "Nested")],
        [HttpRule("POST", "/v/items:export", "Verb")],
        # Neither holds the other, yet /v/a/b is in both.
        [HttpRule("GET", "/v/a/{x}", "A"), HttpRule("POST", "/v/{y}/b", "B")],
    ],
    ids=["double-star", "nested-variable", "custom-verb", "partial-overlap"],
)
def test_a_path_the_routes_could_not_describe_is_refused(rules: list[HttpRule]) -> None:
    with pytest.raises(ValueError, match="HTTP rule path"):
        known_paths(rules)
