"""Per-adapter encodings in the registry (``reg.encodings``): store (calibration, AIMET import,
build), query, check.

Rows are per tensor, so an AIMET import replaces exactly the tensors it names and leaves the rest
of what calibration computed. ``adapter_id=None`` holds the base's own encodings (the default
adapter's)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from loramgr.errors import IntegrityError, InvalidInputError, NotFoundError, UsageError
from loramgr.formats.encodings import load
from loramgr.records import Adapter, Base, EncodingSet
from loramgr.registry import rows
from loramgr.registry.models import EncodingRow

if TYPE_CHECKING:
    from loramgr.registry.core import RegistryCore


@dataclass(frozen=True)
class GraphNames:
    """Every tensor of a base's graphs (read from the stored ONNX files, weights not loaded): what an
    activation encoding may name (node outputs: LoRA-branch outputs, projection outputs, graph I/O)
    and what a base weight encoding may name (float initializers)."""

    activations: frozenset[str] = frozenset()
    weights: frozenset[str] = frozenset()


def tensor_names(base: Base, graph: GraphNames | None = None) -> tuple[set[str], set[str]]:
    """(activation tensor names, weight names) a base's encodings may use: graph I/O, declared points
    and (with ``graph``) every inner tensor; LoRA weight inputs, and with ``graph`` base weights."""
    io: set[str] = set()
    for g in base.graphs:
        io |= set(g.inputs) | set(g.outputs)
    params = base.lora_inputs
    # AIMET quantizes some constants as activations (an embedding table feeding a Gather): initializers too
    inner = set(graph.activations) | set(graph.weights) if graph else set()
    acts = (io | set(base.quantization_points) | inner) - params
    return acts, params | set(graph.weights if graph else ())


_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<m>.+)\.lora_(?P<r>[AB])(?:\.[^.]+)?\.weight$")
_SCALE_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<m>.+)\.lora_scale(?:\.[^.]+)?$")


def canonical_name(name: str, lora_inputs: set[str]) -> str:
    """A tensor name as AIMET or PEFT writes it -> the base's: ``base_model.model.`` dropped, the
    adapter name segment (``lora_A.<adapter>.weight``) dropped, and a module path that differs by a
    wrapper prefix (``model.`` or none) matched to the one attachment point it names."""
    m = _LORA_NAME.match(name)
    if name in lora_inputs or not m:
        return name
    want = f"{m.group('m')}.lora_{m.group('r')}.weight"
    if want in lora_inputs:
        return want
    found = [n for n in lora_inputs if n.endswith("." + want) or want.endswith("." + n)]
    return found[0] if len(found) == 1 else name


def scale_module(name: str) -> str | None:
    """The module path of AIMET's ``<module>.lora_scale`` tensor (None for other names)."""
    m = _SCALE_NAME.match(name)
    return m.group("m") if m else None


def check_names(enc: EncodingSet, base: Base, source: str, graph: GraphNames | None = None) -> None:
    """Every encoding must name a tensor of the base (graph tensors for activations, LoRA inputs or
    base weights for params), and a LoRA param encoding must have one entry per output channel of its
    tensor, or one."""
    acts, weights = tensor_names(base, graph)
    params = base.lora_inputs
    for sec, have, allowed, what in (
        ("activation_encodings", enc.activation, acts | params, "graph tensor"),
        ("param_encodings", enc.param, weights, "LoRA weight input" + (" or base weight" if graph else "")),
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
        if name in channels and len(entries) not in (1, channels[name]):
            raise InvalidInputError(
                source,
                f"param_encodings.{name}: {len(entries)} entries; the tensor has {channels[name]} output channels"
                " (give one per channel, or one for the whole tensor)",
            )


@dataclass(frozen=True)
class AimetFile:
    """An AIMET encodings file read against a base: its encodings under the base's names, and the
    modules whose ``lora_scale`` (AIMET's separate ``alpha / r``) it holds."""

    encodings: EncodingSet
    scale_modules: frozenset[str]


@dataclass(frozen=True)
class OwnerEncodings:
    """One owner's encodings on one base, for ``encodings show``."""

    owner: str  # adapter ref, or "default"
    base: str
    encodings: EncodingSet


class Encodings:
    """``reg.encodings``: the encoding rows of a registry."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg
        self._graph_names: dict[int, GraphNames] = {}

    def graph_names(self, base: Base) -> GraphNames:
        """The tensors of ``base``'s stored graphs (cached per base and process)."""
        if base.id not in self._graph_names:
            import onnx

            acts: set[str] = set()
            weights: set[str] = set()
            for g in base.graphs:
                path = self.reg.store.path_for(g.sha256)
                if not path.is_file():
                    raise IntegrityError(
                        str(path), f"store object of graph {g.name} is missing", hint="run `loramgr fsck`"
                    )
                gp = onnx.load(str(path), load_external_data=False).graph
                acts |= {o for n in gp.node for o in n.output if o} | {i.name for i in gp.input}
                acts |= {o.name for o in gp.output}
                weights |= {t.name for t in gp.initializer if t.data_type in (1, 10, 16)}  # float, scalars too
            self._graph_names[base.id] = GraphNames(frozenset(acts - weights), frozenset(weights - base.lora_inputs))
        return self._graph_names[base.id]

    def read_aimet(self, path: str | Path, base: Base) -> AimetFile:
        """An AIMET encodings file (any layout ``formats.encodings.parse`` takes), its tensor names
        mapped to the base's (``canonical_name``) and checked against every tensor of its graphs (exit 4
        on any unknown name): done before anything is written."""
        lora = base.lora_inputs
        graph = self.graph_names(base)
        doc = load(path, is_param=lambda n: canonical_name(n, lora) in lora or n in graph.weights)
        mapped = {
            sec: {canonical_name(n, lora): v for n, v in doc.get(sec, {}).items()}
            for sec in ("activation_encodings", "param_encodings")
        }
        enc = EncodingSet.from_aimet(mapped)
        check_names(enc, base, str(path), graph)
        scales = frozenset(m for m in map(scale_module, doc.get("lora_scales", [])) if m)
        return AimetFile(enc, scales)

    def read_file(self, path: str | Path, base: Base) -> EncodingSet:
        """``read_aimet``'s encodings."""
        return self.read_aimet(path, base).encodings

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
