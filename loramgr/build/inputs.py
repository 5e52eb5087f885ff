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


INT_BITS = {"int8": 8, "int16": 16}


def weight_encodings(adapter: dict[str, Any], base: dict[str, Any], bits: int,
                     prepared: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Symmetric per-output-channel encodings of an adapter's prepared weights (what ``build
    --precision int8|int16`` uses when calibration has not stored any)."""
    from loramgr.formats.encodings import symmetric_per_channel

    x = prepared if prepared is not None else prepared_inputs(adapter, base)
    names = {n for ap in base["attachment_point_list"] for n in (ap["tensor_a"], ap["tensor_b"])}
    return {"activation_encodings": {},
            "param_encodings": {n: symmetric_per_channel(x[n], bits, axis=1) for n in sorted(names)}}


def section_inputs(adapter: dict[str, Any] | None, base: dict[str, Any],
                   prepared: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """What a section holds. Float precisions: the prepared tensors. int8/int16: each LoRA weight
    quantized with the adapter's param encodings; for graphs whose LoRA inputs are integer (``base
    export --quantized-lora``) the integer codes plus ``<input>_scale``, else (float graphs) the
    dequantized values, which reproduces the quantization error exactly."""
    from loramgr.formats.encodings import quantize_symmetric

    x = prepared if prepared is not None else (default_inputs(base) if adapter is None
                                               else prepared_inputs(adapter, base))
    bits = INT_BITS.get(base["precision"])
    if bits is None:
        return x
    params = (adapter or {}).get("encodings", {}).get("param_encodings") or {}
    out: dict[str, np.ndarray] = {}
    for ap in base["attachment_point_list"]:
        for n in (ap["tensor_a"], ap["tensor_b"]):
            w = x[n].astype(np.float32)
            encs = params.get(n) or [{"bitwidth": bits, "scale": 1.0}] * w.shape[1]
            q, scales = quantize_symmetric(w, encs, axis=1)
            scales = np.broadcast_to(scales, (w.shape[1],)).astype(np.float32)
            if ap["dtype"] in INT_BITS:
                out[n] = q.astype(np.int8 if INT_BITS[ap["dtype"]] == 8 else np.int16)
                out[n + "_scale"] = scales
            else:
                out[n] = (q.astype(np.float32) * scales[None, :]).astype(w.dtype if ap["dtype"] == "float32" else
                                                                          np.float16 if ap["dtype"] == "float16" else w.dtype)
    return out
