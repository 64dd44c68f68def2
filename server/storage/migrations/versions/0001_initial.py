"""Customers, orders, order items and the per-customer rollup of paid orders.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "customers",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(email) > 0", name="customers_email_not_empty"),
    )
    op.create_index(
        "customers_email_lower_key", "customers", [sa.text("lower(email)")], unique=True
    )
    op.create_table(
        "orders",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "customer_id",
            sa.BigInteger,
            sa.ForeignKey("customers.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("is_archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("total_cents", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('DRAFT', 'PAID', 'SHIPPED', 'CANCELLED')", name="orders_status_valid"
        ),
        sa.CheckConstraint("total_cents >= 0", name="orders_total_not_negative"),
    )
    # ListOrders walks newest first (keyset on id) within each filter.
    op.create_index("orders_customer_id_idx", "orders", ["customer_id", "id"])
    op.create_index("orders_status_id_idx", "orders", ["status", "id"])
    op.create_index(
        "orders_visible_id_idx",
        "orders",
        ["id"],
        postgresql_where=sa.text("NOT is_archived"),
        sqlite_where=sa.text("NOT is_archived"),
    )
    op.create_table(
        "order_items",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "order_id",
            sa.BigInteger,
            sa.ForeignKey("orders.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price_cents", sa.BigInteger, nullable=False),
        sa.CheckConstraint("length(sku) > 0", name="order_items_sku_not_empty"),
        sa.CheckConstraint("quantity > 0", name="order_items_quantity_positive"),
        sa.CheckConstraint("unit_price_cents >= 0", name="order_items_price_not_negative"),
    )
    op.create_index("order_items_order_id_idx", "order_items", ["order_id", "id"])
    op.create_table(
        "customer_totals",
        sa.Column(
            "customer_id",
            sa.BigInteger,
            sa.ForeignKey("customers.id", ondelete="RESTRICT"),
            primary_key=True,
        ),
        sa.Column("order_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("order_count >= 0", name="customer_totals_count_not_negative"),
        sa.CheckConstraint("total_cents >= 0", name="customer_totals_total_not_negative"),
    )
    # GetSummary: an index walk over customers with paid orders, best first.
    op.create_index(
        "customer_totals_ranking_idx",
        "customer_totals",
        [sa.text("total_cents DESC"), "customer_id"],
        postgresql_where=sa.text("order_count > 0"),
        sqlite_where=sa.text("order_count > 0"),
    )
    if postgresql:
        # Email substring filter: a trigram index serves lower(email) LIKE '%...%'.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX customers_email_trgm_idx ON customers "
            "USING gin (lower(email) gin_trgm_ops)"
        )


def downgrade() -> None:
    for table in ("customer_totals", "order_items", "orders", "customers"):
        op.drop_table(table)
