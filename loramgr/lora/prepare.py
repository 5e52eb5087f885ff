"""Pure numpy functions that turn one PEFT adapter into a base's canonical LoRA inputs.

This is the only implementation of these rules (docs/conventions.md); build, calibrate, verify and export
all reuse it:

* PEFT stores ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]`` (also for GPT-2 ``Conv1D`` bases with
  ``fan_in_fan_out``, and as ``lora_embedding_A/B`` for embeddings); the graph takes ``A.T`` ``[in, R]``
  and ``B.T`` ``[R, out]`` for ``MatMul``.
* The scaling ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA; per module via ``rank_pattern`` /
  ``alpha_pattern``) is folded into B.
* The rank is zero-padded to the base's max rank R; attachment points the adapter does not target
  get all-zero A and B. Both are exact: zero rows/columns add nothing to ``(x @ A) @ B``.
* The result is cast to the base's precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loramgr.formats.peft import Scaling
from loramgr.records import AttachmentPoint

NP_DTYPE = {"fp32": np.float32, "fp16": np.float16, "float32": np.float32, "float16": np.float16}


@dataclass
class Prepared:
    tensors: dict[str, np.ndarray]
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> rank, scaling, source module


def canonical_pair(
    a: np.ndarray, b: np.ndarray, scale: float, max_rank: int, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """PEFT (A ``[r, in]``, B ``[out, r]``) -> graph (A ``[in, R]``, B*scale ``[R, out]``), zero-padded."""
    r, in_f = a.shape
    out_f, r_b = b.shape
    if r != r_b:
        raise ValueError(f"lora_A rank {r} != lora_B rank {r_b}")
    if r > max_rank:
        raise ValueError(f"rank {r} exceeds the max rank {max_rank}")
    ca = np.zeros((in_f, max_rank), dtype=np.float32)
    cb = np.zeros((max_rank, out_f), dtype=np.float32)
    ca[:, :r] = a.astype(np.float32).T
    cb[:r, :] = (b.astype(np.float64) * scale).astype(np.float32).T
    return ca.astype(dtype, copy=False), cb.astype(dtype, copy=False)


def zero_pair(t: AttachmentPoint, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((t.in_features, t.rank), dtype), np.zeros((t.rank, t.out_features), dtype)


def prepare(
    targets: Sequence[AttachmentPoint],
    pairs: Mapping[str, tuple[str, str]],
    load: Callable[[str], np.ndarray],
    *,
    scaling: Scaling,
    precision: str = "fp32",
) -> Prepared:
    """Canonical inputs for every target of the base.

    ``pairs`` maps a target's module path to the adapter's (A key, B key); ``load`` reads one tensor.
    Validation has already mapped module paths (wrapper prefixes) and checked shapes.
    """
    dtype = NP_DTYPE[precision] if precision in NP_DTYPE else np.float32
    out = Prepared({})
    for t in targets:
        if t.module_path in pairs:
            ka, kb = pairs[t.module_path]
            a, b = load(ka), load(kb)
            s = scaling.factor(t.module_path, a.shape[0])
            ca, cb = canonical_pair(a, b, s, t.rank, dtype)
            out.modules[t.module_path] = {"rank": int(a.shape[0]), "scaling": s}
        else:
            ca, cb = zero_pair(t, dtype)
        out.tensors[t.tensor_a], out.tensors[t.tensor_b] = ca, cb
    return out


def default_adapter(targets: Sequence[AttachmentPoint], precision: str = "fp32") -> dict[str, np.ndarray]:
    """The all-zero adapter: applying it gives the base model back."""
    dtype = NP_DTYPE.get(precision, np.float32)
    out: dict[str, np.ndarray] = {}
    for t in targets:
        out[t.tensor_a], out[t.tensor_b] = zero_pair(t, dtype)
    return out


def fp16_overflow(x: np.ndarray) -> float:
    """Largest magnitude in ``x`` that fp16 cannot hold (0.0 when it all fits; inf for NaN or Inf)."""
    if x.size and not np.isfinite(x).all():
        return float("inf")
    m = float(np.max(np.abs(x.astype(np.float32)))) if x.size else 0.0
    return m if m > float(np.finfo(np.float16).max) else 0.0
