"""processing_object.dispatched_at: when the running operation was last sent to the executors

Revision ID: 3b1f0c2a9d10
Revises: 7f54d60c7070
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b1f0c2a9d10"
down_revision: str | None = "7f54d60c7070"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("processing_object", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("processing_object", "dispatched_at")
