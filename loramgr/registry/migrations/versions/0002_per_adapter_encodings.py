"""per-adapter quantization encodings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "encoding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tensor", sa.String(length=512), nullable=False),
        sa.Column("entries", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapter.id"], name=op.f("fk_encoding_adapter_id_adapter"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_encoding_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_encoding")),
        sa.UniqueConstraint("base_id", "owner", "kind", "tensor", name=op.f("uq_encoding_base_id_owner_kind_tensor")),
    )
    with op.batch_alter_table("encoding", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_encoding_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_encoding_base_id"), ["base_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("encoding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_encoding_base_id"))
        batch_op.drop_index(batch_op.f("ix_encoding_adapter_id"))
    op.drop_table("encoding")
