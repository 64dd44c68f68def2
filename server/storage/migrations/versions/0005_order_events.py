"""The outbox of order events: one row per change of an order, written in the transaction
that makes the change, read by WatchOrders.

`position` orders the events. On PostgreSQL every insert takes a transaction-level advisory
lock first and keeps it until its commit, so positions are taken and made visible in the same
order: a watcher that has seen position n has seen every kept event before it. SQLite's
writers already commit one at a time. AUTOINCREMENT on SQLite (a sequence on PostgreSQL):
positions are never reused, even once pruning has emptied the table.

`order_events_pruned` remembers the last position retention deleted, so that a cursor older
than the kept events is refused rather than silently continued past the gap.

Seeds write no events: a seed loads its rows in bulk, outside the order lifecycle.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "order_events",
        sa.Column("position", BigId, primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        # No foreign key: orders are never deleted, and the insert need not check one.
        sa.Column("order_id", sa.BigInteger, nullable=False),
        sa.Column("customer_id", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # The order after the change, as JSON: what a consumer acts on, with no read of its own.
        sa.Column("payload", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    # A watcher of one customer reads its events in order; retention deletes the oldest.
    op.create_index("order_events_customer_idx", "order_events", ["customer_id", "position"])
    op.create_index("order_events_created_idx", "order_events", ["created_at"])
    op.create_table(
        "order_events_pruned",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("through", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="order_events_pruned_one_row"),
    )
    op.execute("INSERT INTO order_events_pruned (id, through) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("order_events_pruned")
    op.drop_index("order_events_created_idx", table_name="order_events")
    op.drop_index("order_events_customer_idx", table_name="order_events")
    op.drop_table("order_events")
