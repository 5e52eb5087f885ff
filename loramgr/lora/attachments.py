"""Inspecting a base before it is registered: ONNX graphs -> attachment points, max rank, precision.

A base model as loramgr sees it is one or more LoRA-ready graphs that form one context.

Prefill and decode graphs of one model share attachment-point names, so one adapter (and one super
adapter section) serves both; per-layer parts each own their attachment points.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError, UsageError
from loramgr.formats.onnx_graph import PRECISION_OF, AttachmentPointInfo, alpha_slots, inspect_graph
from loramgr.names import check_name

PRECISIONS = ("fp32", "fp16", "int8", "int16")
_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1, "int16": 2}
#: default bound on one adapter's LoRA inputs for a base (every section is this size): checked before
#: anything is allocated, so a base with absurd LoRA shapes is refused instead of exhausting memory
DEFAULT_MAX_LORA_BYTES = 8 << 30


def max_lora_bytes() -> int:
    """``LORAMGR_MAX_LORA_BYTES`` or the default (8 GiB)."""
    v = os.environ.get("LORAMGR_MAX_LORA_BYTES", "")
    return int(v) if v.isdigit() else DEFAULT_MAX_LORA_BYTES


@dataclass
class GraphFile:
    name: str
    path: Path
    kind: str
    io: dict[str, Any]
    external: list[dict[str, Any]]
    sha256: str = ""
    size: int = 0


@dataclass
class BaseSpec:
    graphs: list[GraphFile]
    attachment_points: dict[str, AttachmentPointInfo]
    ap_graphs: dict[str, set[str]]
    max_rank: int
    precision: str
    alpha_input: str | None
    graph_order: list[str] = field(default_factory=list)
    max_adapters: int | None = None  # alpha slots N

    def fingerprint(self) -> str:
        blob = json.dumps([(g.name, g.sha256, [e.get("sha256") for e in g.external]) for g in self.graphs])
        return hashlib.sha256(blob.encode()).hexdigest()


def guess_kind(name: str) -> str:
    n = name.lower()
    for kind in ("prefill", "decode"):
        if kind in n:
            return kind
    return "part" if n.startswith("part") else "single"


def inspect_base(
    graphs: Sequence[tuple[str, str | Path]],
    *,
    max_rank: int | None = None,
    precision: str | None = None,
    alpha_input: str | None = "lora_alpha",
    allow_empty: bool = False,
    kinds: dict[str, str] | None = None,
) -> BaseSpec:
    """Inspect every graph and merge their attachment points into one consistent base description."""
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}", f"must be one of {', '.join(PRECISIONS)}")
    specs: list[GraphFile] = []
    aps: dict[str, AttachmentPointInfo] = {}
    ap_graphs: dict[str, set[str]] = {}
    seen_alpha = False
    slots: dict[str, int | None] = {}
    for gname, gpath in graphs:
        check_name(gname, "graph name")
        if any(s.name == gname for s in specs):
            raise UsageError(f"graph {gname}", "given twice")
        info = inspect_graph(gpath)
        if not info.attachment_points and not allow_empty:
            raise InvalidInputError(
                str(gpath),
                "graph has no LoRA attachment points (no inputs named "
                "'<module>.lora_A.weight' / '<module>.lora_B.weight')",
                hint="export it with `loramgr base export`, or pass --allow-empty",
            )
        for mp, ap in info.attachment_points.items():
            prev = aps.get(mp)
            if prev is not None and prev != ap:
                raise InvalidInputError(
                    str(gpath), f"attachment point {mp} differs from graph(s) {sorted(ap_graphs[mp])}: {ap} vs {prev}"
                )
            aps[mp] = ap
            ap_graphs.setdefault(mp, set()).add(gname)
        if alpha_input and alpha_input in info.inputs:
            seen_alpha = True
            slots[gname] = alpha_slots(info, alpha_input)
        specs.append(
            GraphFile(
                gname,
                Path(gpath),
                (kinds or {}).get(gname) or guess_kind(gname),
                info.io(),
                [{"location": loc} for loc in info.external_files],
            )
        )
    need = sum((ap.in_features + ap.out_features) * ap.rank * _ITEMSIZE.get(ap.dtype, 4) for ap in aps.values())
    if need > max_lora_bytes():
        raise InvalidInputError(
            str(graphs[0][1]),
            f"the LoRA inputs of these graphs would need {need} bytes per adapter, more than the limit of "
            f"{max_lora_bytes()} bytes",
            hint="check the LoRA input shapes; raise the limit with LORAMGR_MAX_LORA_BYTES if they are right",
        )
    ranks = sorted({ap.rank for ap in aps.values()})
    if len(ranks) > 1:
        raise InvalidInputError(
            str(graphs[0][1]),
            f"attachment points have different ranks {ranks}; LoRA v2 needs one max rank for every attachment point",
        )
    inferred = ranks[0] if ranks else (max_rank or 0)
    if max_rank is not None and ranks and max_rank != inferred:
        raise UsageError(f"--max-rank {max_rank}", f"the graphs' LoRA inputs have rank {inferred}")
    dtypes = sorted({ap.dtype for ap in aps.values()})
    if len(dtypes) > 1:
        raise InvalidInputError(str(graphs[0][1]), f"LoRA inputs mix dtypes {dtypes}")
    inferred_prec = PRECISION_OF.get(dtypes[0], dtypes[0]) if dtypes else (precision or "fp32")
    if precision is not None and dtypes and precision != inferred_prec and precision not in ("int8", "int16"):
        raise UsageError(f"--precision {precision}", f"the graphs' LoRA inputs are {dtypes[0]}")
    if len(set(slots.values())) > 1:
        raise InvalidInputError(str(graphs[0][1]), f"graphs disagree on the alpha slots: {slots}")
    with_idx = {ap.tensor_indices is not None for ap in aps.values()}
    n_slots = next(iter(slots.values()), None)
    if with_idx and with_idx != {n_slots is not None}:
        raise InvalidInputError(
            str(graphs[0][1]),
            "alpha slots ([1, N] alpha) and `<module>.lora_indices` inputs come together, at every attachment point",
        )
    return BaseSpec(
        specs,
        aps,
        ap_graphs,
        inferred,
        precision or inferred_prec,
        alpha_input if seen_alpha else None,
        [s.name for s in specs],
        n_slots,
    )
