"""`python -m server check` recomputes order totals and the summary rollup from the rows they
derive from: silent when nothing drifted, loud (exit 1) when something did, exact with --fix."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from harness import OrdersServer, run_check
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool


def test_check_finds_and_fixes_drift_in_totals_and_rollup(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server()
    for _ in server.stub.Seed(
        pb.SeedRequest(customers=20, orders_per_customer=5, items_per_order=3), timeout=60
    ):
        pass
    clean = run_check(server)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "consistent" in clean.stdout

    top = server.stub.GetSummary(pb.GetSummaryRequest(limit=1)).customers[0]
    engine = sa.create_engine(server.database_url, poolclass=NullPool)
    with engine.begin() as conn:
        order_id = conn.execute(sa.text("SELECT min(id) FROM orders")).scalar_one()
        customer_id = conn.execute(sa.text("SELECT max(customer_id) FROM customer_totals")).scalar()
        conn.execute(
            sa.text("UPDATE orders SET total_cents = total_cents + 1 WHERE id = :id"),
            {"id": order_id},
        )
        conn.execute(
            sa.text(
                "UPDATE customer_totals SET order_count = order_count + 2 WHERE customer_id = :id"
            ),
            {"id": customer_id},
        )
        # The rollup's copy of an email (what the summary shows) drifting from the customer's.
        other_id = top.customer_id
        conn.execute(
            sa.text(
                "UPDATE customer_totals SET email = 'stale@example.com' WHERE customer_id = :id"
            ),
            {"id": other_id},
        )
    engine.dispose()

    # The summary shows the rollup's copy: what the check must catch.
    shown = server.stub.GetSummary(pb.GetSummaryRequest(limit=1)).customers[0]
    assert shown.email == "stale@example.com"
    drifted = run_check(server)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert f"order {order_id}:" in drifted.stdout
    assert f"customer {customer_id}:" in drifted.stdout
    assert f"customer {other_id}:" in drifted.stdout and "'stale@example.com'" in drifted.stdout

    fixed = run_check(server, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repaired" in fixed.stdout
    assert run_check(server).returncode == 0
    assert server.stub.GetSummary(pb.GetSummaryRequest(limit=1)).customers[0] == top
