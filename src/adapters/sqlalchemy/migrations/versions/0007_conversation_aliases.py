"""Frontend chat ids (the AI SDK's chat ids, AG-UI thread ids) mapped per user to conversations.

Revision ID: 0007_conversation_aliases
Revises: 0006_usage
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_conversation_aliases"
down_revision: str | Sequence[str] | None = "0006_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_aliases",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_aliases_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "external_id", name=op.f("pk_conversation_aliases")),
    )
    op.create_index("ix_conversation_aliases_conversation_id", "conversation_aliases", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_conversation_aliases_conversation_id", table_name="conversation_aliases")
    op.drop_table("conversation_aliases")
