"""docs/openapi.yaml is good enough to build a client from: openapi-python-client generates a
package from it, pip installs that package as generated, and its calls work through a real Envoy
in front of a real server, their answers parsed into the document's models."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from gateway_stack import Gateway
from harness import ROOT, OrdersServer, ServerFactory, unique_email

DOCUMENT = ROOT / "docs" / "openapi.yaml"
PACKAGE = "orders_rest_client"
DISTRIBUTION = "orders-rest-client"
# A fixed package name, so a new title in the document does not break the imports below. No
# post hooks: the generator's default ones run a formatter that a machine need not have, and
# the package must install as the generator wrote it.
CONFIG = f"""\
project_name_override: {DISTRIBUTION}
package_name_override: {PACKAGE}
post_hooks: []
"""
NOT_FOUND = 5


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command[0]} failed\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def client_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the generated package is installed into."""
    work = tmp_path_factory.mktemp("openapi-client")
    (work / "config.yaml").write_text(CONFIG, encoding="utf-8")
    generator = Path(sys.executable).with_name("openapi-python-client")
    assert generator.exists(), "openapi-python-client (the dev extra) is not installed"
    # --meta setup: a setup.py that the venv's setuptools builds, so nothing is downloaded to
    # build it (the default, poetry, needs poetry-core from an index).
    _run(
        [
            str(generator),
            "generate",
            "--path",
            str(DOCUMENT),
            "--config",
            "config.yaml",
            "--output-path",
            "generated",
            "--meta",
            "setup",
        ],
        work,
    )
    site = work / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(work / "generated"),
        ],
        work,
    )
    return site


@pytest.fixture(scope="module")
def generated(client_site: Path) -> Iterator[ModuleType]:
    sys.path.insert(0, str(client_site))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(client_site))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def own_gateway(
    sqlite_servers: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    """A server of this module's own, so the summary holds only what the test made."""
    return start_gateway(sqlite_servers.start("openapi-client"))


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generated_package_carries_the_documents_version(client_site: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = {
        d.metadata["Name"]: d.version
        for d in importlib.metadata.distributions(path=[str(client_site)])
    }
    assert found == {DISTRIBUTION: project["version"]}


def test_a_generated_client_creates_pays_lists_and_summarises_through_envoy(
    own_gateway: Gateway, generated: ModuleType
) -> None:
    api = _module("api.orders_service")
    models = _module("models")
    for name in (
        "create_customer",
        "create_order",
        "get_order",
        "pay_order",
        "list_orders",
        "get_summary",
    ):
        importlib.import_module(f"{api.__name__}.{name}")
    # trust_env off: a proxy set in the environment must not stand between the test and Envoy.
    client = generated.Client(
        base_url=f"http://{own_gateway.target}",
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30.0),
        httpx_args={"trust_env": False},
    )
    with client:
        email = unique_email()
        created = api.create_customer.sync_detailed(
            client=client, body=models.CreateCustomerRequest(email=email, name="Ann")
        )
        assert created.status_code == 201, created.content
        customer = created.parsed
        assert isinstance(customer, models.Customer)
        assert (customer.email, customer.name) == (email, "Ann")
        assert int(customer.id) > 0

        items = [
            models.OrderItemInput(sku="A-1", quantity=2, unit_price_cents=150),
            # int64 in a request may be a string, as the document says.
            models.OrderItemInput(sku="B-2", quantity=1, unit_price_cents="999"),
        ]
        made = api.create_order.sync_detailed(
            client=client,
            body=models.CreateOrderRequest(customer_id=int(customer.id), items=items),
        )
        assert made.status_code == 201, made.content
        order = made.parsed
        assert isinstance(order, models.Order)
        assert order.customer_id == customer.id
        assert order.status == models.OrderStatus.DRAFT
        assert order.total_cents == str(2 * 150 + 999)
        assert [(i.sku, i.quantity, i.unit_price_cents) for i in order.items] == [
            ("A-1", 2, "150"),
            ("B-2", 1, "999"),
        ]
        assert order.is_archived is False

        got = api.get_order.sync(int(order.id), client=client)
        assert isinstance(got, models.Order)
        assert (got.id, got.total_cents, got.status) == (order.id, "1299", order.status)
        assert isinstance(got.customer, models.Customer) and got.customer.email == email
        assert got.created_at == order.created_at

        paid = api.pay_order.sync(int(order.id), client=client)
        assert isinstance(paid, models.Order)
        assert (paid.id, paid.status) == (order.id, models.OrderStatus.PAID)

        listed = api.list_orders.sync(
            client=client,
            status=models.OrderStatusInputType0.PAID,
            customer_id=int(customer.id),
        )
        assert isinstance(listed, models.ListOrdersResponse)
        assert [(o.id, o.status, o.total_cents) for o in listed.orders] == [
            (order.id, models.OrderStatus.PAID, "1299")
        ]
        assert listed.next_page_token == ""

        summary = api.get_summary.sync(client=client, limit=10)
        assert isinstance(summary, models.GetSummaryResponse)
        assert [
            (r.customer_id, r.email, r.order_count, r.total_cents) for r in summary.customers
        ] == [(customer.id, email, "1", "1299")]

        missing = api.get_order.sync_detailed(2**62, client=client)
        assert missing.status_code == 404
        error = missing.parsed
        assert isinstance(error, models.GoogleRpcStatus)
        assert error.code == NOT_FOUND
        assert str(2**62) in error.message
