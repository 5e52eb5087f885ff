"""Per-adapter encodings in the registry (``reg.encodings``): store (calibration, AIMET import,
build), query, check.

Rows are per tensor, so an AIMET import replaces exactly the tensors it names and leaves the rest
of what calibration computed. ``adapter_id=None`` holds the base's own encodings (the default
adapter's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from loramgr.errors import InvalidInputError, NotFoundError, UsageError
from loramgr.formats.encodings import load
from loramgr.records import Adapter, Base, EncodingSet, JsonRecord
from loramgr.registry import rows
from loramgr.registry.models import EncodingRow

if TYPE_CHECKING:
    from loramgr.registry.core import RegistryCore


def tensor_names(base: Base) -> tuple[set[str], set[str]]:
    """(graph I/O tensor names, LoRA weight input names) of a base."""
    io: set[str] = set()
    for g in base.graphs:
        io |= set(g.inputs) | set(g.outputs)
    params = base.lora_inputs
    return (io | set(base.quantization_points)) - params, params


def check_names(enc: EncodingSet, base: Base, source: str) -> None:
    """Every encoding must name a tensor of the base (I/O tensors for activations, LoRA inputs for
    params), and a param encoding must have one entry per output channel of its tensor, or one."""
    io, params = tensor_names(base)
    for sec, have, allowed, what in (
        ("activation_encodings", enc.activation, io | params, "graph tensor"),
        ("param_encodings", enc.param, params, "LoRA weight input"),
    ):
        unknown = sorted(set(have) - allowed)
        if unknown:
            raise InvalidInputError(
                source,
                f"{sec}.{unknown[0]}: not a {what} of base {base.ref}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            )
    # per output channel (axis 1: A [in, R] has R, B [R, out] has out) or one for the whole tensor
    channels = {
        n: c for ap in base.attachment_points for n, c in ((ap.tensor_a, ap.rank), (ap.tensor_b, ap.out_features))
    }
    for name, entries in enc.param.items():
        if len(entries) not in (1, channels[name]):
            raise InvalidInputError(
                source,
                f"param_encodings.{name}: {len(entries)} entries; the tensor has {channels[name]} output channels"
                " (give one per channel, or one for the whole tensor)",
            )


@dataclass(frozen=True)
class OwnerEncodings:
    """One owner's encodings on one base, for ``encodings show``."""

    owner: str  # adapter ref, or "default"
    base: str
    encodings: EncodingSet


@dataclass(frozen=True)
class EncodingsImported(JsonRecord):
    """What ``encodings import --json`` prints."""

    adapter: str
    base: str
    tensors: int
    file: str


class Encodings:
    """``reg.encodings``: the encoding rows of a registry."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg

    @staticmethod
    def read_file(path: str | Path, base: Base) -> EncodingSet:
        """An AIMET encodings file, parsed and checked against ``base``'s tensor names (exit 4 on any
        unknown name): done before anything is written."""
        enc = EncodingSet.from_aimet(load(path))
        check_names(enc, base, str(path))
        return enc

    def write(
        self,
        s: Session,
        base_id: int,
        adapter_id: int | None,
        enc: EncodingSet,
        source: str,
        *,
        replace_all: bool = False,
        use_case_id: int | None = None,
    ) -> int:
        """Upsert inside the caller's transaction (so a registration and its encodings are one). The
        owner is the adapter, the use case (``use_case_id``), or with neither the base itself."""
        owner = -use_case_id if use_case_id else (adapter_id or 0)
        if replace_all:
            s.execute(delete(EncodingRow).where(EncodingRow.base_id == base_id, EncodingRow.owner == owner))
        n = 0
        for kind, entries in (("activation", enc.activation), ("param", enc.param)):
            names = list(entries)
            if names and not replace_all:
                s.execute(
                    delete(EncodingRow).where(
                        EncodingRow.base_id == base_id,
                        EncodingRow.owner == owner,
                        EncodingRow.kind == kind,
                        EncodingRow.tensor.in_(names),
                    )
                )
            for name in names:
                s.add(
                    EncodingRow(
                        base_id=base_id,
                        adapter_id=None if use_case_id else adapter_id,
                        use_case_id=use_case_id,
                        owner=owner,
                        kind=kind,
                        tensor=name,
                        entries=[dict(e) for e in entries[name]],
                        source=source,
                    )
                )
                n += 1
        self.reg.event(
            s,
            "encodings",
            f"use_case:{use_case_id}" if use_case_id else f"adapter:{adapter_id}" if adapter_id else f"base:{base_id}",
            source=source,
            tensors=n,
        )
        return n

    def save(
        self,
        base_id: int,
        adapter_id: int | None,
        enc: EncodingSet,
        source: str,
        *,
        replace_all: bool = False,
        use_case_id: int | None = None,
    ) -> int:
        """Upsert the tensors of ``enc`` for one owner; ``replace_all`` first drops the owner's rows."""
        return self.reg.retrying(
            lambda s: self.write(s, base_id, adapter_id, enc, source, replace_all=replace_all, use_case_id=use_case_id)
        )

    def get(
        self, base_id: int, adapter_id: int | None, tensor: str | None = None, *, use_case_id: int | None = None
    ) -> EncodingSet:
        """One owner's encodings (empty when there are none)."""
        owner = -use_case_id if use_case_id else (adapter_id or 0)
        with self.reg.session() as s:
            q = select(EncodingRow).where(EncodingRow.base_id == base_id, EncodingRow.owner == owner)
            if tensor is not None:
                q = q.where(EncodingRow.tensor == tensor)
            return rows.encoding_set(list(s.scalars(q.order_by(EncodingRow.kind, EncodingRow.tensor))))

    def get_many(self, base_id: int, adapter_ids: Sequence[int]) -> dict[int, EncodingSet]:
        """``get`` for several adapters in one query (empty sets for those without encodings)."""
        found: dict[int, list[EncodingRow]] = {i: [] for i in adapter_ids}
        with self.reg.session() as s:
            q = (
                select(EncodingRow)
                .where(EncodingRow.base_id == base_id, EncodingRow.owner.in_(list(adapter_ids)))
                .order_by(EncodingRow.owner, EncodingRow.kind, EncodingRow.tensor)
            )
            for r in s.scalars(q):
                found[r.owner].append(r)
        return {k: rows.encoding_set(v) for k, v in found.items()}

    def bases_with(self, adapter_id: int) -> list[int]:
        """Ids of the bases an adapter has encodings for."""
        with self.reg.session() as s:
            return sorted(set(s.scalars(select(EncodingRow.base_id).where(EncodingRow.owner == adapter_id))))

    def base_for(self, adapter: Adapter, base_ref: str | None) -> Base:
        """The base an adapter's encodings belong to: ``base_ref``, else the only one it has encodings
        for (or, with none, the only one it is validated for)."""
        if base_ref:
            return self.reg.base(base_ref)
        bases = self.reg.bases()
        ids = self.bases_with(adapter.id) or sorted(
            b.id for b in bases if adapter.id in self.reg.validated_adapter_ids(b.id)
        )
        if len(ids) != 1:
            raise UsageError(
                f"adapter {adapter.ref}",
                f"has encodings for {len(ids)} bases; pass --base"
                if ids
                else "is not validated for any base; pass --base",
            )
        return next(b for b in bases if b.id == ids[0])

    def show(self, ref: str, base_ref: str | None, tensor: str | None = None) -> OwnerEncodings:
        """An adapter's encodings (``ref`` ``default`` with a base: the base's own); exit 3 when none."""
        if ref == "default" and base_ref:
            base, adapter_id, label = self.reg.base(base_ref), None, "default"
        else:
            ad = self.reg.adapter(ref)
            base, adapter_id, label = self.base_for(ad, base_ref), ad.id, ad.ref
        enc = self.get(base.id, adapter_id, tensor)
        if not enc:
            raise NotFoundError(
                f"encodings of {label} on {base.ref}" + (f" for {tensor}" if tensor else ""),
                "none stored",
                hint="run `loramgr calibrate` or `loramgr encodings import`",
            )
        return OwnerEncodings(label, base.ref, enc)

    def import_file(self, ref: str, path: str | Path, base_ref: str | None = None) -> EncodingsImported:
        """Attach an AIMET file to an adapter; its tensors replace what calibration computed."""
        ad = self.reg.adapter(ref)
        base = self.base_for(ad, base_ref)
        n = self.save(base.id, ad.id, self.read_file(path, base), "import")
        return EncodingsImported(ad.ref, base.ref, n, str(path))
