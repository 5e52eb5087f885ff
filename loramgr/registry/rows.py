"""ORM rows -> frozen records (:mod:`loramgr.records`). The only place that knows both shapes, so a
column rename touches one function and no caller ever holds a live ORM object outside a session.

The converters read rows by attribute only, so the read-only fast path of ``loramgr show``
(:mod:`loramgr.registry.quickread`, stdlib ``sqlite3``) uses them too; SQLAlchemy and the ORM models
are imported by the query helpers here, when they run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramgr.errors import InvalidInputError, RegistryDamagedError
from loramgr.formats.encodings import checked_entries
from loramgr.formats.peft import LoraConfig
from loramgr.formats.safetensors import TensorInfo
from loramgr.lora.mapping import group_pairs, module_leaf_names
from loramgr.records import (
    DEFAULT_OWNER,
    Adapter,
    Artifact,
    AttachmentPoint,
    Base,
    EncodingSet,
    Event,
    ExternalData,
    Graph,
    OwnerType,
    SectionKind,
    SectionOwner,
    UseCase,
    UseCaseSlot,
    artifact_kind,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from loramgr.registry.models import AdapterRow, ArtifactRow, BaseRow, EncodingRow, EventRow, UseCaseRow


def iso(at: Any) -> str:
    """Timestamps are stored naive UTC; records carry ISO-8601 with ``Z``."""
    return str(at.isoformat()) + "Z"


def tensor_lists(s: Session, adapter_ids: Sequence[int]) -> dict[int, tuple[TensorInfo, ...]]:
    """adapter id -> its tensors (key order), for any number of adapters in one query. Shapes come
    as JSON text and are parsed in one ``json.loads`` (a build of 100 adapters reads ~6,000 rows: one
    parse per row was most of a one-adapter rebuild's time)."""
    from sqlalchemy import Text, cast, select

    from loramgr.registry.models import AdapterTensorRow

    out: dict[int, list[TensorInfo]] = {i: [] for i in adapter_ids}
    q = (
        select(
            AdapterTensorRow.adapter_id,
            AdapterTensorRow.key,
            AdapterTensorRow.dtype,
            cast(AdapterTensorRow.shape, Text),
            AdapterTensorRow.offset_begin,
            AdapterTensorRow.offset_end,
        )
        .where(AdapterTensorRow.adapter_id.in_(list(out)))
        .order_by(AdapterTensorRow.adapter_id, AdapterTensorRow.key)
    )
    rows = s.connection().execute(q).all()  # plain rows: no ORM loading step per row
    shapes = json.loads("[" + ",".join(r[3] for r in rows) + "]")
    for (aid, key, dtype, _, b, e), shape in zip(rows, shapes, strict=True):
        out[aid].append(TensorInfo(key, dtype, tuple(shape), b, e))
    return {k: tuple(v) for k, v in out.items()}


def tensor_counts(s: Session) -> dict[int, int]:
    from sqlalchemy import func, select

    from loramgr.registry.models import AdapterTensorRow

    rows = s.execute(select(AdapterTensorRow.adapter_id, func.count()).group_by(AdapterTensorRow.adapter_id))
    return {int(aid): int(n) for aid, n in rows}


def _leaf_targets(keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(module_leaf_names(group_pairs(list(keys))))


def adapter(
    a: AdapterRow,
    store_path: Path,
    *,
    tensors: tuple[TensorInfo, ...] | None = None,
    tensor_count: int | None = None,
    s: Session | None = None,
) -> Adapter:
    """An adapter record; ``tensors`` makes it a full record. Without a config listing
    ``target_modules``, the targets are the tensors' module leaves (one query when not given)."""
    cfg = a.peft_config or {}
    tm = cfg.get("target_modules")
    targets: tuple[str, ...] | str
    if isinstance(tm, list):
        targets = tuple(sorted(tm))
    elif tm:
        targets = str(tm)
    else:
        if tensors is not None:
            keys: Sequence[str] = [t.key for t in tensors]
        else:
            assert s is not None
            from sqlalchemy import select

            from loramgr.registry.models import AdapterTensorRow

            keys = s.scalars(select(AdapterTensorRow.key).where(AdapterTensorRow.adapter_id == a.id)).all()
        targets = _leaf_targets(keys)
    if tensor_count is None:
        if tensors is not None:
            tensor_count = len(tensors)
        else:
            assert s is not None
            from sqlalchemy import func, select

            from loramgr.registry.models import AdapterTensorRow

            tensor_count = int(
                s.scalar(select(func.count()).select_from(AdapterTensorRow).where(AdapterTensorRow.adapter_id == a.id))
                or 0
            )
    return Adapter(
        id=a.id,
        name=a.name,
        version=a.version,
        sha256=a.sha256,
        config_sha256=a.config_sha256,
        size=a.size,
        rank=a.rank,
        lora_alpha=a.alpha,
        dtype=a.dtype,
        status=a.status,
        tensor_count=tensor_count,
        target_modules=targets,
        base_hint=a.base_hint,
        tags=dict(a.tags or {}),
        source_uri=a.source_uri,
        created_at=iso(a.created_at),
        store_path=store_path,
        peft_config=LoraConfig.from_json(a.peft_config) if isinstance(a.peft_config, dict) else None,
        tensors=tensors,
        config_json=a.config_json,
    )


def base(b: BaseRow) -> Base:
    details = b.details or {}
    graphs = tuple(
        Graph(
            name=g.name,
            kind=g.kind,
            sha256=g.onnx_sha256,
            size=g.size,
            file_name=g.file_name,
            path=g.path,
            io=g.io or {},
            external_data=tuple(
                ExternalData(str(e.get("location")), str(e.get("sha256") or ""), int(e.get("size") or 0))
                for e in g.external_data or []
            ),
        )
        for g in b.graphs
    )
    aps = tuple(
        AttachmentPoint(
            ap.module_path,
            ap.tensor_a,
            ap.tensor_b,
            ap.in_features,
            ap.out_features,
            ap.rank,
            ap.dtype,
            tuple(ap.graphs or ()),
            ap.tensor_indices,
        )
        for ap in b.attachment_points
    )
    return Base(
        id=b.id,
        name=b.name,
        version=b.version,
        sdk_version=b.sdk_version,
        precision=b.precision,
        max_rank=b.max_rank,
        alpha_tensor=b.alpha_tensor,
        quant_updatable_mode=b.quant_updatable_mode,
        status=b.status,
        created_at=iso(b.created_at),
        graphs=graphs,
        attachment_points=aps,
        fingerprint=details.get("fingerprint"),
        export=details.get("export"),
        quantization_points=tuple(details.get("quantization_points") or ()),
        max_adapters=b.max_adapters,
    )


def artifact(
    a: ArtifactRow | Any,
    adapter_name: str | None = None,
    adapter_version: str | None = None,
    use_case: str | None = None,
) -> Artifact:
    """An artifact record from its ORM row, or from a plain row with the same column names. The row
    keeps the owner as nullable ids (foreign keys); the record as one :class:`SectionOwner`. Without
    the names (a reuse lookup) the owner carries the id and an empty name."""
    kind = artifact_kind(a.kind)
    owner: SectionOwner | None = None
    if a.adapter_id is not None:
        owner = SectionOwner(OwnerType.ADAPTER, adapter_name or "", a.adapter_id, adapter_version)
    elif a.use_case_id is not None:
        owner = SectionOwner(OwnerType.USE_CASE, use_case or "", a.use_case_id)
    elif a.group_name is not None:
        owner = SectionOwner.group(a.group_name)
    elif kind is SectionKind.DEFAULT:
        owner = DEFAULT_OWNER
    return Artifact(kind, tuple(a.graphs or ()), a.path, a.sha256, a.size, a.cache_key, owner)


def encoding_set(rows: Sequence[EncodingRow]) -> EncodingSet:
    act: dict[str, Any] = {}
    par: dict[str, Any] = {}
    for r in rows:
        try:  # a stored row is checked like an imported file: a NaN scale or a string is damage, not a crash
            entries = checked_entries(r.entries, f"{r.kind} encoding of {r.tensor}", "registry database")
        except InvalidInputError as e:
            raise RegistryDamagedError("registry database", e.why or e.message) from None
        (act if r.kind == "activation" else par)[r.tensor] = entries
    return EncodingSet(act, par, tuple(sorted({r.source for r in rows})))


def event(e: EventRow) -> Event:
    return Event(iso(e.at), e.actor, e.action, e.subject, dict(e.details or {}))


def use_case(u: UseCaseRow, base_ref: str, refs: dict[int, str]) -> UseCase:
    """A use case record; ``refs`` maps its adapters' ids to NAME@VERSION."""
    return UseCase(
        id=u.id,
        base=base_ref,
        base_id=u.base_id,
        name=u.name,
        hot=bool(u.hot),
        status=u.status,
        created_at=iso(u.created_at),
        slots=tuple(UseCaseSlot(s.slot, refs[s.adapter_id], s.adapter_id, float(s.default_alpha)) for s in u.slots),
        group=u.group_name,
    )
