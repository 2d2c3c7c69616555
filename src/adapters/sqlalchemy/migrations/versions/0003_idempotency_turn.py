"""Idempotency keys name the turn that holds them, so only that turn can complete, renew or release its claim.

Revision ID: 0003_idempotency_turn
Revises: 0002_turns
Create Date: 2025-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_idempotency_turn"
down_revision: str | Sequence[str] | None = "0002_turns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("turn_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("turn_id")
