"""the adapter's own adapter_config.json, as registered (verify loads PEFT from it, not from loramgr's parse)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapter", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapter", schema=None) as batch_op:
        batch_op.drop_column("config_json")
