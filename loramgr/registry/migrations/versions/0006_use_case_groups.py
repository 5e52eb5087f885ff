"""use-case groups: use cases that share quantization parameters (QNN LoRA v3 grouped LoRA)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("use_case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_name", sa.String(length=128), nullable=True))
    with op.batch_alter_table("artifact", schema=None) as batch_op:  # a group's quantization section
        batch_op.add_column(sa.Column("group_name", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_column("group_name")
    with op.batch_alter_table("use_case", schema=None) as batch_op:
        batch_op.drop_column("group_name")
