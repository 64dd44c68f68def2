"""Case-insensitive email uniqueness and search through a stored key, lowercased by the server.

SQLite's lower() folds ASCII letters only, so an index on lower(email) let "ÉLODIE@" and
"élodie@" both in there (and the email filter missed them) while PostgreSQL refused the
second. The key is computed in Python, one way for both databases.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    op.add_column("customers", sa.Column("email_key", sa.String(254), nullable=True))
    customers = sa.table("customers", sa.column("id"), sa.column("email"), sa.column("email_key"))
    rows = bind.execute(sa.select(customers.c.id, customers.c.email)).all()
    if rows:
        bind.execute(
            customers.update()
            .where(customers.c.id == sa.bindparam("row_id"))
            .values(email_key=sa.bindparam("key")),
            [{"row_id": row.id, "key": row.email.lower()} for row in rows],
        )
    # Dropped first: SQLite's batch mode rebuilds the table and cannot carry an index on an
    # expression across.
    op.drop_index("customers_email_lower_key", table_name="customers")
    with op.batch_alter_table("customers") as batch:
        batch.alter_column("email_key", existing_type=sa.String(254), nullable=False)
    op.create_index("customers_email_key_key", "customers", ["email_key"], unique=True)
    if postgresql:
        op.execute("DROP INDEX IF EXISTS customers_email_trgm_idx")
        op.execute(
            "CREATE INDEX customers_email_key_trgm_idx ON customers "
            "USING gin (email_key gin_trgm_ops)"
        )


def downgrade() -> None:
    op.drop_index("customers_email_key_key", table_name="customers")
    op.create_index(
        "customers_email_lower_key", "customers", [sa.text("lower(email)")], unique=True
    )
    op.drop_column("customers", "email_key")
