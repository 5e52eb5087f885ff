"""``--lora_weight_list`` files for ``qairt-converter``: the base graph's updatable tensor names.

The QNN tutorial's sample writes the adapter's safetensors keys, which do not match a converted
graph's tensor names (and has a variable-name bug); the list must name the graph's LoRA inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramgr.infra.store import atomic_write
from loramgr.records import Base, JsonRecord


@dataclass(frozen=True)
class WeightLists(JsonRecord):
    """What ``weight-list --json`` prints: per-graph names, the files written, whether one list serves all."""

    base: str
    files: dict[str, str]
    lists: dict[str, list[str]]
    shared: bool


def natural_key(s: str) -> list[Any]:
    """``layers.10`` sorts after ``layers.9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def weight_lists(base: Base, include_alpha: bool = False) -> dict[str, list[str]]:
    """graph name -> its updatable tensor names, in a deterministic (natural) order."""
    out: dict[str, list[str]] = {}
    for g in base.graph_names:
        names: list[str] = []
        for ap in sorted(base.points_of(g), key=lambda a: natural_key(a.module_path)):
            names += list(ap.updatable)  # A, B and, with alpha slots, the slot map
        if include_alpha and base.alpha_tensor:
            names.append(base.alpha_tensor)
        out[g] = names
    return out


def render(names: list[str]) -> str:
    return "".join(n + "\n" for n in names)


def write_weight_lists(
    base: Base, out: str | Path | None, *, include_alpha: bool = False, fmt: str = "qairt"
) -> WeightLists:
    """Write one file when every graph has the same list, else one per graph (``<stem>.<graph><suffix>``);
    with ``out=None`` nothing is written."""
    lists = weight_lists(base, include_alpha)
    unique = {tuple(v) for v in lists.values()}
    files: dict[str, str] = {}
    if out is not None:
        out = Path(out)
        if fmt == "json":
            atomic_write(out, (json.dumps({"base": base.ref, "graphs": lists}, indent=2) + "\n").encode())
            files = {g: str(out) for g in lists}
        elif len(unique) <= 1:
            atomic_write(out, render(next(iter(lists.values()), [])).encode())
            files = {g: str(out) for g in lists}
        else:
            for g, names in lists.items():
                p = out.with_name(f"{out.stem}.{g}{out.suffix}")
                atomic_write(p, render(names).encode())
                files[g] = str(p)
    return WeightLists(base.ref, files, lists, len(unique) <= 1)
