"""initial registry schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "adapter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("version_num", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("config_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("peft_config", sa.JSON(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("base_hint", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_adapter_name_version")),
        sa.UniqueConstraint("sha256", "config_sha256", name=op.f("uq_adapter_sha256_config_sha256")),
    )
    with op.batch_alter_table("adapter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapter_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_sha256"), ["sha256"], unique=False)

    op.create_table(
        "base_model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sdk_version", sa.String(length=64), nullable=True),
        sa.Column("precision", sa.String(length=16), nullable=False),
        sa.Column("max_rank", sa.Integer(), nullable=False),
        sa.Column("alpha_tensor", sa.String(length=256), nullable=True),
        sa.Column("quant_updatable_mode", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_model")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_base_model_name_version")),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_subject"), ["subject"], unique=False)

    op.create_table(
        "adapter_tensor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("offset_begin", sa.BigInteger(), nullable=False),
        sa.Column("offset_end", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapter.id"], name=op.f("fk_adapter_tensor_adapter_id_adapter"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_tensor")),
        sa.UniqueConstraint("adapter_id", "key", name=op.f("uq_adapter_tensor_adapter_id_key")),
    )
    with op.batch_alter_table("adapter_tensor", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapter_tensor_adapter_id"), ["adapter_id"], unique=False)

    op.create_table(
        "attachment_point",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("module_path", sa.String(length=512), nullable=False),
        sa.Column("tensor_a", sa.String(length=600), nullable=False),
        sa.Column("tensor_b", sa.String(length=600), nullable=False),
        sa.Column("in_features", sa.Integer(), nullable=False),
        sa.Column("out_features", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("graphs", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_attachment_point_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachment_point")),
        sa.UniqueConstraint("base_id", "module_path", name=op.f("uq_attachment_point_base_id_module_path")),
    )
    with op.batch_alter_table("attachment_point", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attachment_point_base_id"), ["base_id"], unique=False)

    op.create_table(
        "build",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("sdk_version", sa.String(length=64), nullable=True),
        sa.Column("share_adapters", sa.Boolean(), nullable=False),
        sa.Column("precision", sa.String(length=16), nullable=False),
        sa.Column("inputs_hash", sa.String(length=64), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_build_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build")),
    )
    with op.batch_alter_table("build", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_build_base_id"), ["base_id"], unique=False)

    op.create_table(
        "graph",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("file_name", sa.String(length=256), nullable=False),
        sa.Column("external_data", sa.JSON(), nullable=False),
        sa.Column("io", sa.JSON(), nullable=False),
        sa.Column("context_binary_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_graph_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_graph")),
        sa.UniqueConstraint("base_id", "name", name=op.f("uq_graph_base_id_name")),
    )
    with op.batch_alter_table("graph", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_graph_base_id"), ["base_id"], unique=False)

    op.create_table(
        "validation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapter.id"], name=op.f("fk_validation_adapter_id_adapter"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["base_id"], ["base_model.id"], name=op.f("fk_validation_base_id_base_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validation")),
    )
    with op.batch_alter_table("validation", schema=None) as batch_op:
        batch_op.create_index("ix_validation_adapter_base", ["adapter_id", "base_id"], unique=False)

    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("build_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("graphs", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("cache_key", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapter.id"], name=op.f("fk_artifact_adapter_id_adapter"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["build_id"], ["build.id"], name=op.f("fk_artifact_build_id_build"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact")),
    )
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_artifact_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_artifact_build_id"), ["build_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_artifact_cache_key"), ["cache_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifact_cache_key"))
        batch_op.drop_index(batch_op.f("ix_artifact_build_id"))
        batch_op.drop_index(batch_op.f("ix_artifact_adapter_id"))

    op.drop_table("artifact")
    with op.batch_alter_table("validation", schema=None) as batch_op:
        batch_op.drop_index("ix_validation_adapter_base")

    op.drop_table("validation")
    with op.batch_alter_table("graph", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_graph_base_id"))

    op.drop_table("graph")
    with op.batch_alter_table("build", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_build_base_id"))

    op.drop_table("build")
    with op.batch_alter_table("attachment_point", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attachment_point_base_id"))

    op.drop_table("attachment_point")
    with op.batch_alter_table("adapter_tensor", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_tensor_adapter_id"))

    op.drop_table("adapter_tensor")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_subject"))

    op.drop_table("event")
    op.drop_table("base_model")
    with op.batch_alter_table("adapter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_sha256"))
        batch_op.drop_index(batch_op.f("ix_adapter_name"))

    op.drop_table("adapter")
