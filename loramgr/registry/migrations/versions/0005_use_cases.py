"""use cases: adapters active together (alpha slots), their slots, sections and encodings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "use_case",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("hot", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_use_case_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_use_case")),
        sa.UniqueConstraint("base_id", "name", name=op.f("uq_use_case_base_id_name")),
    )
    with op.batch_alter_table("use_case", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_use_case_base_id"), ["base_id"], unique=False)
    op.create_table(
        "use_case_adapter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("use_case_id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("default_alpha", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapter.id"], name=op.f("fk_use_case_adapter_adapter_id_adapter"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["use_case_id"], ["use_case.id"], name=op.f("fk_use_case_adapter_use_case_id_use_case"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_use_case_adapter")),
        sa.UniqueConstraint("use_case_id", "slot", name=op.f("uq_use_case_adapter_use_case_id_slot")),
    )
    with op.batch_alter_table("use_case_adapter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_use_case_adapter_use_case_id"), ["use_case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_use_case_adapter_adapter_id"), ["adapter_id"], unique=False)
    with op.batch_alter_table("base_model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_adapters", sa.Integer(), nullable=True))
    with op.batch_alter_table("attachment_point", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tensor_indices", sa.String(length=600), nullable=True))
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.add_column(sa.Column("use_case_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_artifact_use_case_id"), ["use_case_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_artifact_use_case_id_use_case"), "use_case", ["use_case_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("encoding", schema=None) as batch_op:
        batch_op.add_column(sa.Column("use_case_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_encoding_use_case_id"), ["use_case_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_encoding_use_case_id_use_case"), "use_case", ["use_case_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("encoding", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_encoding_use_case_id_use_case"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_encoding_use_case_id"))
        batch_op.drop_column("use_case_id")
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_artifact_use_case_id_use_case"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_artifact_use_case_id"))
        batch_op.drop_column("use_case_id")
    with op.batch_alter_table("attachment_point", schema=None) as batch_op:
        batch_op.drop_column("tensor_indices")
    with op.batch_alter_table("base_model", schema=None) as batch_op:
        batch_op.drop_column("max_adapters")
    with op.batch_alter_table("use_case_adapter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_use_case_adapter_adapter_id"))
        batch_op.drop_index(batch_op.f("ix_use_case_adapter_use_case_id"))
    op.drop_table("use_case_adapter")
    with op.batch_alter_table("use_case", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_use_case_base_id"))
    op.drop_table("use_case")
