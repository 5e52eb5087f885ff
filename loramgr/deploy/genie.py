"""The ``lora`` block of a Genie dialog config, from a plan (docs/conventions.md and docs/qairt-lora-v3.md).

Genie rejects unknown keys, so the block is built from an explicit key list and checked against it;
it wants one bin-section per context binary, in context order, for every adapter. LoRA v2 (``lora-
version: 2``): one entry per adapter, its scalar alpha. LoRA v3 (plans of ``--lora-version 3``
builds): one entry per use case (every adapter alone is one), ``alphas`` naming its adapters in slot
order, and ``groups`` when the plan has any.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loramgr.errors import IncompatibleError, InternalError, UsageError
from loramgr.infra.store import atomic_write
from loramgr.runtime import qnn

LORA_KEYS = {"version", "lora-version", "alpha-tensor-name", "adapters"}
OPTIONAL_LORA_KEYS = {"groups"}  # lora-version 2 or 3 only
ADAPTER_KEYS = {"version", "name", "alphas", "bin-sections"}
GROUP_KEYS = {"version", "name", "members", "quant-bin-sections"}


def check_block(block: dict[str, Any]) -> None:
    """Refuse what Genie would refuse, and what its parser lets through but a runtime cannot resolve:
    unknown or missing keys, empty section lists, two adapters of one name, groups naming adapters
    the block does not have."""
    if not LORA_KEYS <= set(block) <= LORA_KEYS | OPTIONAL_LORA_KEYS or block["lora-version"] not in (2, 3):
        raise ValueError(f"lora block keys {sorted(block)}: expected {sorted(LORA_KEYS)} (+ groups)")
    for a in block["adapters"]:
        if set(a) != ADAPTER_KEYS or not a["bin-sections"] or not all(isinstance(p, str) for p in a["bin-sections"]):
            raise ValueError(f"adapter entry {a.get('name')!r} is not a valid Genie adapter")
    names = {a["name"] for a in block["adapters"]}
    if len(names) != len(block["adapters"]):
        raise ValueError("two adapter entries share a name (Genie's parser accepts it; applyLora could not choose)")
    for g in block.get("groups", []):
        if set(g) != GROUP_KEYS or not set(g["members"]) <= names:
            raise ValueError(f"group entry {g.get('name')!r} is not a valid Genie group")


def _bin_sections(ref: str, sections: list[dict[str, Any]], contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entry's section for every context binary, in context order."""
    out = []
    for c in contexts:
        mine = [s for s in sections if set(s["graphs"]) <= set(c["graphs"])]
        if len(mine) != 1:
            raise IncompatibleError(
                ref,
                f"has {len(mine)} sections for context {c['name']}; Genie needs one bin-section per context binary",
                hint="build with --share-adapters",
            )
        out.append(mine[0])
    return out


def lora_block(plan: dict[str, Any], plan_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Paths are written relative to ``out_dir`` (where the Genie config lives)."""
    alpha = (plan.get("alpha") or {}).get("tensor")
    v3 = plan.get("lora_version") == 3
    if not alpha:
        raise IncompatibleError("genie config", "the base has no alpha tensor; Genie's LoRA needs one")
    contexts = plan["base"]["contexts"]

    def rel(s: dict[str, Any]) -> str:
        return Path(os.path.relpath(plan_dir / s["path"], out_dir)).as_posix()

    adapters = []
    for a in plan["adapters"]:
        secs = [rel(s) for s in _bin_sections(f"adapter {a['ref']}", a["sections"], contexts)]
        adapters.append({"version": 1, "name": a["name"], "alphas": [a["name"] if v3 else alpha], "bin-sections": secs})
    if v3:
        by_ref = {a["ref"]: a["name"] for a in plan["adapters"]}
        for u in plan.get("use_cases", []):
            secs = [rel(s) for s in _bin_sections(f"use case {u['name']}", u["sections"], contexts)]
            names = [by_ref.get(m["name"], m["name"]) for m in sorted(u["adapters"], key=lambda m: m["slot"])]
            adapters.append({"version": 1, "name": u["name"], "alphas": names, "bin-sections": secs})
    block: dict[str, Any] = {
        "version": 1,
        "lora-version": 3 if v3 else 2,
        "alpha-tensor-name": alpha,
        "adapters": adapters,
    }
    groups = quant_groups(plan)
    if groups:
        block["groups"] = [
            {
                "version": 1,
                "name": g["name"],
                "members": g["members"],
                "quant-bin-sections": [rel(s) for s in _bin_sections(f"group {g['name']}", g["sections"], contexts)],
            }
            for g in groups
        ]
    check_block(block)
    return block


def quant_groups(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's groups that have quantization sections. A group of float LoRA inputs has none (its
    members share nothing to apply): for Genie and the QNN EP its use cases are plain ones."""
    return [g for g in plan.get("groups") or [] if g.get("sections")]


def dialog_config(block: dict[str, Any], ctx_bins: list[str]) -> dict[str, Any]:
    """A whole Genie dialog config (basic dialog, HTP engine, the model's context binaries) with the
    ``lora`` block where Genie reads it, ``engine.model.binary.lora``: what a device app starts from,
    and what Genie's own parser is given to check a block loramgr wrote."""
    return {
        "dialog": {
            "version": 1,
            "type": "basic",
            "context": {"version": 1, "size": 4096, "n-vocab": 32000, "bos-token": 1, "eos-token": 2},
            "tokenizer": {"version": 1, "path": "tokenizer.json"},
            "engine": {
                "version": 1,
                "n-threads": 3,
                "backend": {
                    "version": 1,
                    "type": "QnnHtp",
                    "QnnHtp": {
                        "version": 1,
                        "spill-fill-bufsize": 0,
                        "mmap-budget": 0,
                        "use-mmap": False,
                        "cpu-mask": "0xe0",
                        "poll": True,
                    },
                },
                "model": {
                    "version": 1,
                    "type": "binary",
                    "binary": {"version": 1, "ctx-bins": list(ctx_bins) or ["model.bin"], "lora": block},
                },
            },
        }
    }


def check_with_genie(block: dict[str, Any], ctx_bins: list[str]) -> bool:
    """Genie's own parser (the ``[qnn]`` extra's ``libGenie.so``) on the block inside a dialog config.
    A block loramgr wrote that Genie refuses is a bug in loramgr (exit 1). False: no parser here."""
    try:
        qnn.devices()
    except UsageError:
        return False
    status, said = qnn.genie_parse(json.dumps(dialog_config(block, ctx_bins)))
    if status != 0:
        raise InternalError("genie config", f"Genie {qnn.genie_version()} refuses the lora block ({status}): {said}")
    return True


def target_ctx_bins(plan: dict[str, Any], plan_dir: Path, out_dir: Path) -> list[str]:
    """The context binaries of the plan's first HTP target, relative to ``out_dir``."""
    for t in (plan.get("targets") or {}).values():
        files = {f["path"] for g in t["graphs"].values() for f in g["files"]}
        return [Path(os.path.relpath(plan_dir / f, out_dir)).as_posix() for f in sorted(files)]
    return []


def write_genie_config(plan_path: str | Path, out: str | Path) -> Path:
    """Write ``{"lora": <block>}`` for a written plan to ``out`` (atomically), after Genie's own parser
    accepted it inside a dialog config when the ``[qnn]`` extra is installed; returns its path."""
    plan_path, g = Path(plan_path), Path(out).absolute()
    doc = json.loads(plan_path.read_text())
    block = lora_block(doc, plan_path.parent, g.parent)
    check_with_genie(block, target_ctx_bins(doc, plan_path.parent, g.parent))
    atomic_write(g, (json.dumps({"lora": block}, indent=2) + "\n").encode())
    return g
