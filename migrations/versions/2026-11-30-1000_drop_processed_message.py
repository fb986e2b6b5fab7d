"""drop processed_message: results are idempotent by the object's state, the inbox was redundant

Revision ID: 8e41c7d2b5a3
Revises: 5c2d8e4f1a77
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8e41c7d2b5a3"
down_revision: str | None = "5c2d8e4f1a77"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("processed_message")


def downgrade() -> None:
    op.create_table(
        "processed_message",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_processed_message")),
    )
