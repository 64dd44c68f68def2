"""Secrets never appear in logs: the database password in DATABASE_URL, in
`python -m server migrate`, `serve` and `check` output at DEBUG, whether the database answers
or not,
and the API and admin tokens (tests/test_access.py and tests/gateway/test_gateway_auth.py
cover the tokens in calls; here they sit beside the password in the environment).

PostgreSQL only: SQLite has no password. The machine's PostgreSQL trusts local connections, so
a password in the URL is accepted and never checked: the server still uses it throughout.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from harness import OrdersServer, ServerFactory, ServerStartError, run_check, unique_email
from orders.v1 import orders_pb2 as pb

PASSWORD = "pw-Db-S3cret-7f1c"
SECRETS = {
    "ORDERS_ADMIN_TOKEN": "admin-S3cret-91ab",
    "ORDERS_API_TOKENS": "write:api-S3cret-22cd",
}


def _env() -> dict[str, str]:
    return {"ORDERS_LOG_LEVEL": "DEBUG", **SECRETS}


def _assert_no_secret(text: str) -> None:
    assert text.strip(), "the log is empty: nothing was checked"
    for secret in (PASSWORD, *(v.split(":")[-1] for v in SECRETS.values())):
        assert secret not in text, f"{secret!r} is in the log:\n{text[-3000:]}"


def test_the_database_password_is_never_logged(
    postgres_servers: ServerFactory, tmp_path: Path
) -> None:
    url = sa.make_url(postgres_servers.databases.create()).set(password=PASSWORD)
    server = OrdersServer(
        url.render_as_string(hide_password=False),
        _env(),
        tmp_path / "server.log",
        "secrets",
        migrate=True,  # the migrate command's output is checked too
    )
    server.start()
    try:
        auth = (("authorization", "Bearer api-S3cret-22cd"),)
        customer = server.stub.CreateCustomer(
            pb.CreateCustomerRequest(email=unique_email("pw"), name="P"), metadata=auth
        )
        with pytest.raises(grpc.RpcError):  # an error's log line too
            server.stub.GetOrder(pb.GetOrderRequest(id=10**12), metadata=auth)
        assert customer.id > 0
    finally:
        server.stop()
    log = server.log_text(limit=200_000)
    assert "--- migrate (exit 0)" in log and "serving gRPC" in log
    assert "***" in log, "the server should show the URL with its password masked"
    _assert_no_secret(log)


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    # Port 1 refuses connections: migrate and check fail with one line that says why (no
    # traceback), and it must not carry the URL's secret.
    url = f"postgresql+psycopg://orders:{PASSWORD}@127.0.0.1:1/orders"
    server = OrdersServer(url, _env(), tmp_path / "server.log", "secrets-down", migrate=True)
    with pytest.raises(ServerStartError) as failed:
        server.start()
    server.stop()
    log = server.log_text(limit=200_000)
    assert "--- migrate (exit 1)" in log, log[-2000:]
    assert "migrate: cannot use the database" in log and "Connection refused" in log, log
    check = run_check(server)
    assert check.returncode == 1
    assert "check: cannot use the database" in check.stderr, check.stderr
    for text in (log, str(failed.value), check.stdout + check.stderr):
        assert "Traceback" not in text, text[-3000:]
        _assert_no_secret(text)
