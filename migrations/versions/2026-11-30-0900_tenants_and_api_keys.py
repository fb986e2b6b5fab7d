"""Tenants and API keys: processing_object.tenant, identifiers unique per tenant, and the api_key table

Revision ID: 5c2d8e4f1a77
Revises: 3b1f0c2a9d10
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5c2d8e4f1a77"
down_revision: str | None = "3b1f0c2a9d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing object belongs to the default tenant, whose S3 layout is the original one.
    op.add_column(
        "processing_object",
        sa.Column("tenant", sa.String(length=64), server_default=sa.text("'default'"), nullable=False),
    )
    op.drop_constraint("uq_processing_object_identifier", "processing_object", type_="unique")
    op.create_unique_constraint(
        "uq_processing_object_tenant_identifier", "processing_object", ["tenant", "identifier"]
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.String(length=16)), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_key_prefix")),
    )


def downgrade() -> None:
    op.drop_table("api_key")
    op.drop_constraint("uq_processing_object_tenant_identifier", "processing_object", type_="unique")
    op.create_unique_constraint("uq_processing_object_identifier", "processing_object", ["identifier"])
    op.drop_column("processing_object", "tenant")
