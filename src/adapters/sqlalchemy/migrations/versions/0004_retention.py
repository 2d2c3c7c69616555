"""Finished turns are found by when they ended, so the janitor deletes expired ones without scanning every turn.

Revision ID: 0004_retention
Revises: 0003_idempotency_turn
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_retention"
down_revision: str | Sequence[str] | None = "0003_idempotency_turn"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_turns_updated_at", "turns", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_turns_updated_at", table_name="turns")
