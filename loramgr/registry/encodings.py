"""Per-adapter encodings in the registry: store (calibration, AIMET import, build), query, check.

Rows are per tensor, so an AIMET import replaces exactly the tensors it names and leaves the rest
of what calibration computed. ``adapter_id=None`` holds the base's own encodings (the default
adapter's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from loramgr.errors import InvalidInputError
from loramgr.registry.models import Encoding

KINDS = {"activation_encodings": "activation", "param_encodings": "param"}


def tensor_names(base: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(graph I/O tensor names, LoRA weight input names) of a base."""
    io: set[str] = set()
    for g in base["graph_list"]:
        io |= set(g["io"].get("inputs", {})) | set(g["io"].get("outputs", {}))
    params = {n for ap in base["attachment_point_list"] for n in (ap["tensor_a"], ap["tensor_b"])}
    return (io | set(base.get("quantization_points") or [])) - params, params


def check_names(enc: dict[str, Any], base: dict[str, Any], source: str) -> None:
    """Every encoding must name a tensor of the base: I/O tensors for activations, LoRA inputs for params."""
    io, params = tensor_names(base)
    for sec, allowed, what in (("activation_encodings", io | params, "graph tensor"),
                               ("param_encodings", params, "LoRA weight input")):
        unknown = sorted(set(enc.get(sec, {})) - allowed)
        if unknown:
            raise InvalidInputError(source, f"{sec}.{unknown[0]}: not a {what} of base {base['ref']}"
                                    + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))


def store(reg: Any, base_id: int, adapter_id: int | None, enc: dict[str, Any], source: str, *,
          replace_all: bool = False) -> int:
    """Upsert the tensors of ``enc`` for one owner; ``replace_all`` first drops the owner's rows."""
    owner = adapter_id or 0

    def write(s: Any) -> int:
        if replace_all:
            s.execute(delete(Encoding).where(Encoding.base_id == base_id, Encoding.owner == owner))
        n = 0
        for sec, kind in KINDS.items():
            names = list(enc.get(sec, {}))
            if names and not replace_all:
                s.execute(delete(Encoding).where(Encoding.base_id == base_id, Encoding.owner == owner,
                                                 Encoding.kind == kind, Encoding.tensor.in_(names)))
            for name in names:
                s.add(Encoding(base_id=base_id, adapter_id=adapter_id, owner=owner, kind=kind, tensor=name,
                               entries=enc[sec][name], source=source))
                n += 1
        reg.event(s, "encodings", f"adapter:{adapter_id}" if adapter_id else f"base:{base_id}",
                  source=source, tensors=n)
        return n

    return reg.retrying(write)


def load(reg: Any, base_id: int, adapter_id: int | None, tensor: str | None = None) -> dict[str, Any]:
    """AIMET-layout encodings of one owner ({} when there are none)."""
    owner = adapter_id or 0
    with reg.session() as s:
        q = select(Encoding).where(Encoding.base_id == base_id, Encoding.owner == owner)
        if tensor is not None:
            q = q.where(Encoding.tensor == tensor)
        rows = list(s.scalars(q.order_by(Encoding.kind, Encoding.tensor)))
        if not rows:
            return {}
        out: dict[str, Any] = {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {}}
        for r in rows:
            out[f"{r.kind}_encodings"][r.tensor] = r.entries
        out["sources"] = sorted({r.source for r in rows})
        return out


def load_many(reg: Any, base_id: int, adapter_ids: list[int]) -> dict[int, dict[str, Any]]:
    """``load`` for several adapters in one query ({} for those without encodings)."""
    out: dict[int, dict[str, Any]] = {i: {} for i in adapter_ids}
    with reg.session() as s:
        q = (select(Encoding).where(Encoding.base_id == base_id, Encoding.owner.in_(adapter_ids))
             .order_by(Encoding.owner, Encoding.kind, Encoding.tensor))
        for r in s.scalars(q):
            doc = out[r.owner] or {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {}}
            doc[f"{r.kind}_encodings"][r.tensor] = r.entries
            out[r.owner] = doc
    return out


def bases_with(reg: Any, adapter_id: int) -> list[int]:
    with reg.session() as s:
        return sorted(set(s.scalars(select(Encoding.base_id).where(Encoding.owner == adapter_id))))
