"""Tool calls that wait for the user's approval, and the conversation's open turn.

Revision ID: 0005_approvals
Revises: 0004_retention
Create Date: 2025-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_approvals"
down_revision: str | Sequence[str] | None = "0004_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("open_turn_id", sa.Uuid(), nullable=True))
    op.create_table(
        "tool_approvals",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("tool_call_id", sa.String(255), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("turn_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column(
            "arguments",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_tool_approvals_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "tool_call_id", name=op.f("pk_tool_approvals")),
    )
    op.create_index(
        "ix_tool_approvals_conversation_id_tool_call_id", "tool_approvals", ["conversation_id", "tool_call_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_tool_approvals_conversation_id_tool_call_id", table_name="tool_approvals")
    op.drop_table("tool_approvals")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("open_turn_id")
