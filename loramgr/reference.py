"""The independent reference ``verify`` holds builds to: an adapter's effect computed from its raw PEFT
file and config in a few lines of numpy, on purpose not through loramgr's own preparation
(:mod:`loramgr.lora.prepare`), so that a bug there cannot hide behind a reference that shares it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loramgr.formats.safetensors import read_header, read_tensor
from loramgr.records import AttachmentPoint

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<m>.+)\.lora_(?:embedding_)?(?P<r>[AB])(?:\.[^.]+)?(?:\.weight)?$")


def _pattern(patterns: dict[str, Any], module: str) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup, restated here for the reference: the first key in
    the config's order whose regex matches the module path's tail (peft/utils/other.py get_pattern_key)."""
    return next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", module)), None)


def peft_factors(weights: Path, config_json: str | None, lora_alpha: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module path -> ``(A.T, (scale * B).T)``: the delta the adapter adds is their product
    ``[in, out]``. Computed from the raw PEFT file and its config in these few lines on purpose: the
    reference ``verify --mode sections`` compares loramgr's sections with must not reuse loramgr's
    own preparation."""
    cfg = json.loads(config_json) if config_json else {}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    header = read_header(weights)  # bytes as stored (bf16 through ml_dtypes); no loramgr preparation
    for key, info in header.tensors.items():
        m = _PEFT_KEY.match(key)
        if m:
            pairs.setdefault(m.group("m"), {})[m.group("r")] = np.asarray(read_tensor(weights, info), np.float64)
    out = {}
    for module, ab in pairs.items():
        a, b = ab["A"], ab["B"]
        r = _pattern(cfg.get("rank_pattern") or {}, module) or cfg.get("r") or a.shape[0]
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module) or lora_alpha
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a.T, (scale * b).T)
    return out


def reference_for(
    factors: dict[str, tuple[np.ndarray, np.ndarray]], module: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference factors of a base attachment point (module paths may differ by a wrapper prefix)."""
    if module in factors:
        return factors[module]
    return next((d for m, d in factors.items() if m.endswith("." + module) or module.endswith("." + m)), None)


def reference_lora(
    points: Sequence[AttachmentPoint],
    refs: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray] | None]],
    slots: int | None,
) -> dict[str, np.ndarray]:
    """Graph inputs holding the raw factors: per attachment point the members' ``A`` and scaled ``B``
    side by side, zero-padded to the graph's rank, and (with alpha slots) each column's slot."""
    out: dict[str, np.ndarray] = {}
    for ap in points:
        ra, rb = np.zeros((ap.in_features, ap.rank)), np.zeros((ap.rank, ap.out_features))
        idx = np.full((1, ap.rank), slots or 0, np.int64)
        col = 0
        for slot, r in enumerate(refs[ap.module_path]):
            if r is not None:
                k = r[0].shape[1]
                ra[:, col : col + k], rb[col : col + k, :], idx[0, col : col + k] = r[0], r[1], slot
                col += k
        dt = np.float16 if ap.dtype == "float16" else np.float32
        out[ap.tensor_a], out[ap.tensor_b] = ra.astype(dt), rb.astype(dt)
        if ap.tensor_indices:
            out[ap.tensor_indices] = idx
    return out
