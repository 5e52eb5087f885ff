"""The ``lora`` block of a Genie dialog config, from a plan (DESIGN.md section 4).

Genie rejects unknown keys, so the block is built from an explicit key list and checked against it;
it wants one bin-section per context binary, in context order, for every adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loramgr.errors import IncompatibleError

LORA_KEYS = {"version", "lora-version", "alpha-tensor-name", "adapters"}
ADAPTER_KEYS = {"version", "name", "alphas", "bin-sections"}


def check_block(block: dict[str, Any]) -> None:
    """Refuse what Genie would refuse: unknown or missing keys, empty section lists."""
    if set(block) != LORA_KEYS:
        raise ValueError(f"lora block keys {sorted(block)} != {sorted(LORA_KEYS)}")
    for a in block["adapters"]:
        if set(a) != ADAPTER_KEYS or not a["bin-sections"] or not all(isinstance(p, str) for p in a["bin-sections"]):
            raise ValueError(f"adapter entry {a.get('name')!r} is not a valid Genie adapter")


def lora_block(plan: dict[str, Any], plan_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Paths are written relative to ``out_dir`` (where the Genie config lives)."""
    alpha = (plan.get("alpha") or {}).get("tensor")
    if not alpha:
        raise IncompatibleError("genie config", "the base has no alpha tensor; Genie's LoRA v2 needs one")
    contexts = plan["base"]["contexts"]
    adapters = []
    for a in plan["adapters"]:
        secs = []
        for c in contexts:
            mine = [s for s in a["sections"] if set(s["graphs"]) <= set(c["graphs"])]
            if len(mine) != 1:
                raise IncompatibleError(
                    f"adapter {a['ref']}",
                    f"has {len(mine)} sections for context {c['name']}; Genie needs one bin-section per context binary",
                    hint="build with --share-adapters",
                )
            secs.append(Path(os.path.relpath(plan_dir / mine[0]["path"], out_dir)).as_posix())
        adapters.append({"version": 1, "name": a["name"], "alphas": [alpha], "bin-sections": secs})
    block = {"version": 1, "lora-version": 2, "alpha-tensor-name": alpha, "adapters": adapters}
    check_block(block)
    return block


def write_genie_config(plan_path: str | Path, out: str | Path) -> Path:
    """Write ``{"lora": <block>}`` for a written plan to ``out`` (atomically); returns its absolute path."""
    from loramgr.store import atomic_write

    plan_path, g = Path(plan_path), Path(out).absolute()
    doc = json.loads(plan_path.read_text())
    atomic_write(g, (json.dumps({"lora": lora_block(doc, plan_path.parent, g.parent)}, indent=2) + "\n").encode())
    return g
