"""ORM models. Constraint names come from one naming convention so that Alembic migrations are
identical on SQLite and PostgreSQL (MLflow's SQL store does the same)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class DamagedValue(ValueError):
    """A stored value its column cannot hold (a hand-edited or damaged row). The registry's session
    reports it as registry damage (exit 10), never as a traceback deep in a command."""


class _Checked(TypeDecorator[Any]):
    """A column type whose values are checked as they are read: a value that does not parse, or is
    not of the column's shape, raises :class:`DamagedValue`. The stored type is ``impl``'s, so the
    schema and the migrations are unchanged."""

    cache_ok = True
    shape: type | None = None
    what = "value"

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        inner = super().result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            try:
                out = inner(value) if inner else value
            except (ValueError, TypeError):
                raise DamagedValue(f"a stored {self.what} does not parse ({str(value)[:40]!r})") from None
            if out is not None and self.shape is not None and not isinstance(out, self.shape):
                raise DamagedValue(f"a stored {self.what} holds a {type(out).__name__}")
            return out

        return process

    @property
    def python_type(self) -> type:
        """The column's Python type (import-registry converts ISO timestamps by it): the checked shape,
        else the stored type's (``datetime`` for a timestamp)."""
        return self.shape if self.shape is not None else self.impl_instance.python_type


class JsonObject(_Checked):
    cache_ok = True
    impl = JSON
    shape = dict
    what = "JSON object"


class JsonList(_Checked):
    cache_ok = True
    impl = JSON
    shape = list
    what = "JSON list"


class Timestamp(_Checked):
    cache_ok = True
    impl = DateTime
    what = "timestamp"


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BaseRow(Model):
    __tablename__ = "base_model"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sdk_version: Mapped[str | None] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    max_rank: Mapped[int] = mapped_column(Integer)
    alpha_tensor: Mapped[str | None] = mapped_column(String(256))
    quant_updatable_mode: Mapped[str] = mapped_column(String(32), default="none")
    max_adapters: Mapped[int | None] = mapped_column(Integer)  # alpha slots (use cases); None: scalar alpha
    status: Mapped[str] = mapped_column(String(16), default="active")
    details: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)

    graphs: Mapped[list[GraphRow]] = relationship(
        back_populates="base", cascade="all, delete-orphan", order_by="GraphRow.position"
    )
    attachment_points: Mapped[list[AttachmentPointRow]] = relationship(
        back_populates="base", cascade="all, delete-orphan", order_by="AttachmentPointRow.module_path"
    )


class GraphRow(Model):
    __tablename__ = "graph"
    __table_args__ = (UniqueConstraint("base_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="single")
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str] = mapped_column(String(256))
    external_data: Mapped[list[dict[str, Any]]] = mapped_column(JsonList, default=list)
    io: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)
    context_binary_sha256: Mapped[str | None] = mapped_column(String(64))

    base: Mapped[BaseRow] = relationship(back_populates="graphs")


class AttachmentPointRow(Model):
    __tablename__ = "attachment_point"
    __table_args__ = (UniqueConstraint("base_id", "module_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    module_path: Mapped[str] = mapped_column(String(512))
    tensor_a: Mapped[str] = mapped_column(String(600))
    tensor_b: Mapped[str] = mapped_column(String(600))
    in_features: Mapped[int] = mapped_column(Integer)
    out_features: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    tensor_indices: Mapped[str | None] = mapped_column(String(600))  # int64 [1, R] slot map (use cases)
    graphs: Mapped[list[str]] = mapped_column(JsonList, default=list)

    base: Mapped[BaseRow] = relationship(back_populates="attachment_points")


class AdapterRow(Model):
    __tablename__ = "adapter"
    __table_args__ = (UniqueConstraint("name", "version"), UniqueConstraint("sha256", "config_sha256"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    version_num: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    config_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    source_uri: Mapped[str] = mapped_column(Text)
    peft_config: Mapped[dict[str, Any] | None] = mapped_column(JsonObject)
    config_json: Mapped[str | None] = mapped_column(Text)  # adapter_config.json as registered
    rank: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    dtype: Mapped[str] = mapped_column(String(16))
    base_hint: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="registered")
    tags: Mapped[dict[str, str]] = mapped_column(JsonObject, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)

    tensors: Mapped[list[AdapterTensorRow]] = relationship(
        back_populates="adapter", cascade="all, delete-orphan", order_by="AdapterTensorRow.key"
    )


class AdapterTensorRow(Model):
    __tablename__ = "adapter_tensor"
    __table_args__ = (UniqueConstraint("adapter_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapter.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(600))
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[int]] = mapped_column(JsonList)
    offset_begin: Mapped[int] = mapped_column(BigInteger)
    offset_end: Mapped[int] = mapped_column(BigInteger)

    adapter: Mapped[AdapterRow] = relationship(back_populates="tensors")


class ValidationRow(Model):
    """The outcome of validating one adapter against one base (the newest row wins)."""

    __tablename__ = "validation"
    __table_args__ = (Index("ix_validation_adapter_base", "adapter_id", "base_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapter.id", ondelete="CASCADE"))
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"))
    ok: Mapped[bool] = mapped_column(Boolean)
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JsonList, default=list)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class BuildRow(Model):
    __tablename__ = "build"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    backend: Mapped[str] = mapped_column(String(16))
    sdk_version: Mapped[str | None] = mapped_column(String(64))
    share_adapters: Mapped[bool] = mapped_column(Boolean, default=False)
    precision: Mapped[str] = mapped_column(String(16), default="fp32")
    inputs_hash: Mapped[str] = mapped_column(String(64))
    out_dir: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="running")
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    log: Mapped[str] = mapped_column(Text, default="")

    artifacts: Mapped[list[ArtifactRow]] = relationship(
        back_populates="build", cascade="all, delete-orphan", order_by="ArtifactRow.id"
    )


class ArtifactRow(Model):
    __tablename__ = "artifact"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("build.id", ondelete="CASCADE"), index=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapter.id", ondelete="SET NULL"), index=True)
    use_case_id: Mapped[int | None] = mapped_column(ForeignKey("use_case.id", ondelete="SET NULL"), index=True)
    group_name: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)  # quantization section
    graphs: Mapped[list[str]] = mapped_column(JsonList, default=list)
    kind: Mapped[str] = mapped_column(String(32))
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)

    build: Mapped[BuildRow] = relationship(back_populates="artifacts")


class EventRow(Model):
    """Audit trail: one row per state change, who/what/when/details."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)


class EncodingRow(Model):
    """Quantization encodings of one tensor for one adapter on one base (``owner`` 0 with no adapter:
    the base's own, i.e. the default adapter's). ``kind`` is activation (graph I/O) or param (LoRA
    weights); ``entries`` is AIMET's list (one per channel for per-channel params)."""

    __tablename__ = "encoding"
    __table_args__ = (UniqueConstraint("base_id", "owner", "kind", "tensor"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapter.id", ondelete="CASCADE"), index=True)
    use_case_id: Mapped[int | None] = mapped_column(ForeignKey("use_case.id", ondelete="CASCADE"), index=True)
    owner: Mapped[int] = mapped_column(Integer, default=0)  # adapter id, -use case id, or 0 for the base
    kind: Mapped[str] = mapped_column(String(16))
    tensor: Mapped[str] = mapped_column(String(512))
    entries: Mapped[list[dict[str, Any]]] = mapped_column(JsonList, default=list)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class PlanRow(Model):
    """A plan written for devices. An ``active`` plan keeps its adapters from being retired; writing
    a new plan to the same path supersedes the old one."""

    __tablename__ = "plan"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    build_id: Mapped[int | None] = mapped_column(ForeignKey("build.id", ondelete="SET NULL"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    adapter_ids: Mapped[list[int]] = mapped_column(JsonList, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class UseCaseRow(Model):
    """Adapters active together on one base (QNN LoRA v3 use case): slot i is the i-th adapter."""

    __tablename__ = "use_case"
    __table_args__ = (UniqueConstraint("base_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_model.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    hot: Mapped[bool] = mapped_column(Boolean, default=False)  # switched by alpha alone (hot switch)
    # use cases of one group share quantization parameters (one quantization section per group)
    group_name: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)

    slots: Mapped[list[UseCaseAdapterRow]] = relationship(
        back_populates="use_case", cascade="all, delete-orphan", order_by="UseCaseAdapterRow.slot"
    )


class UseCaseAdapterRow(Model):
    __tablename__ = "use_case_adapter"
    __table_args__ = (UniqueConstraint("use_case_id", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    use_case_id: Mapped[int] = mapped_column(ForeignKey("use_case.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapter.id", ondelete="CASCADE"), index=True)
    default_alpha: Mapped[float] = mapped_column(Float, default=1.0)

    use_case: Mapped[UseCaseRow] = relationship(back_populates="slots")
