"""Quantization math, all of it in one place (AIMET/QNN convention).

``x = scale * (q + offset)``, ``offset = round(min / scale)`` (<= 0); unsigned codes
``q in [0, 2^bw - 1]`` for asymmetric activations; symmetric weights use signed codes with
``offset = -2^(bw-1)`` in AIMET's file and zero-point 0 at run time. Entries are AIMET's encoding
dicts (``bitwidth, dtype, is_symmetric, min, max, scale, offset``): the file data this math reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def asymmetric(lo: float, hi: float, bits: int = 8) -> dict[str, Any]:
    """Activation encoding covering [lo, hi] (widened to include 0, so 0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0 / levels
    offset = int(round(lo / scale))
    return {
        "bitwidth": bits,
        "dtype": "int",
        "is_symmetric": "False",
        "min": offset * scale,
        "max": (offset + levels) * scale,
        "scale": scale,
        "offset": offset,
    }


def symmetric_per_channel(
    w: np.ndarray, bits: int = 8, axis: int = -1, per_tensor: bool = False
) -> list[dict[str, Any]]:
    """Signed symmetric weight encodings, one per channel along ``axis`` (or one for the tensor).

    A channel that is all zeros (LoRA zero-padding) gets scale 1: it quantizes to exact zeros and
    does not influence the other channels."""
    a = np.abs(np.asarray(w, np.float64))
    qmax = 2 ** (bits - 1) - 1
    amax = [a.max()] if per_tensor else list(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1))
    out = []
    for m in amax:
        scale = float(m) / qmax if m > 0 else 1.0
        out.append(
            {
                "bitwidth": bits,
                "dtype": "int",
                "is_symmetric": "True",
                "min": -scale * (qmax + 1),
                "max": scale * qmax,
                "scale": scale,
                "offset": -(qmax + 1),
            }
        )
    return out


def quantize_symmetric(
    w: np.ndarray, encs: Sequence[Mapping[str, Any]], axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """(signed integer codes, per-channel scales as float32) for ``w`` with ``encs``."""
    bits = encs[0]["bitwidth"]
    scales = np.array([e["scale"] for e in encs], np.float64)
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scales.reshape(shape) if len(encs) > 1 else scales.reshape([1] * w.ndim)
    qmax = 2 ** (bits - 1) - 1
    q = np.clip(np.round(np.asarray(w, np.float64) / s), -qmax - 1, qmax)
    return q.astype(np.int8 if bits <= 8 else np.int16), scales.astype(np.float32)


def quantize(x: Any, e: Mapping[str, Any]) -> np.ndarray:
    """Real -> unsigned code with an asymmetric encoding (``q = round(x / scale) - offset``, clipped)."""
    q = np.round(np.asarray(x, np.float64) / float(e["scale"])) - int(e["offset"])
    return np.clip(q, 0, 2 ** int(e["bitwidth"]) - 1).astype(np.int64)


def dequantize(q: Any, e: Mapping[str, Any]) -> np.ndarray:
    """Code -> real with an asymmetric encoding (``x = scale * (q + offset)``)."""
    return ((np.asarray(q, np.float64) + int(e["offset"])) * float(e["scale"])).astype(np.float32)
