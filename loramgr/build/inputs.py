"""Wiring :mod:`loramgr.prepare` to the registry: a registered adapter -> a base's canonical inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from loramgr.errors import IncompatibleError
from loramgr.loader import AdapterFile
from loramgr.prepare import Target, default_adapter, prepare
from loramgr.validate import check_adapter


def targets_of(base: dict[str, Any], graph: str | None = None) -> list[Target]:
    """The base's attachment points (optionally only those of one graph), in registry order."""
    return [Target(ap["module_path"], ap["tensor_a"], ap["tensor_b"], ap["in_features"], ap["out_features"],
                   ap["rank"]) for ap in base["attachment_point_list"] if graph is None or graph in ap["graphs"]]


def prepared_inputs(adapter: dict[str, Any], base: dict[str, Any]) -> dict[str, np.ndarray]:
    """Canonical LoRA inputs of ``adapter`` for every attachment point of ``base``.

    Re-checks compatibility (cheap, header-level) so that no caller can prepare an adapter that
    validation would refuse.
    """
    f = AdapterFile(adapter)
    c = check_adapter(adapter, adapter["tensor_list"], base, f.load)
    if not c.ok:
        raise IncompatibleError(adapter["ref"], f"incompatible with base {base['ref']} "
                                f"({', '.join(sorted({p.code for p in c.problems}))})",
                                details=[p.to_json() for p in c.problems])
    cfg = adapter.get("peft_config") or {}
    return prepare(targets_of(base), c.pairs, f.load, lora_alpha=float(adapter["lora_alpha"]),
                   precision=base["precision"], config_r=cfg.get("r"), use_rslora=bool(cfg.get("use_rslora")),
                   rank_pattern=cfg.get("rank_pattern"), alpha_pattern=cfg.get("alpha_pattern")).tensors


def default_inputs(base: dict[str, Any]) -> dict[str, np.ndarray]:
    return default_adapter(targets_of(base), base["precision"])
