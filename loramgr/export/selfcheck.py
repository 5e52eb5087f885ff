"""Every exported graph is run once on ONNX Runtime against the model's own forward (the same hooks,
masks and stand-ins, eager) on seeded random inputs, before ``base export`` reports success.

The trace can be right and the ONNX translation of an op still differ from torch's (found on AfMoE's
router: the exported program matched the model, the ONNX graph did not). Such a graph would run and
be wrong, so it is refused (exit 2) naming the graph, the output and the difference.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loramgr.errors import UsageError

#: max |onnx - torch| / max(1, max |torch|) per output: fp32 graphs agree to ~1e-6 here
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


def _random_inputs(fwd: Any, rank: int, dtype: torch.dtype, lora: bool) -> tuple[torch.Tensor, ...]:
    """``fwd``'s example inputs with values that exercise the graph: random token ids and hidden
    states, a full mask, random past K/V, small random LoRA factors (zeros for integer LoRA inputs,
    which the check feeds as their defaults)."""
    g = torch.Generator().manual_seed(0)
    vocab = int(getattr(fwd.model.config, "vocab_size", 2) or 2)
    out = []
    for name, a in zip(fwd.input_names, fwd.example_inputs(rank, dtype), strict=True):
        if name == "input_ids":
            a = torch.randint(0, vocab, a.shape, generator=g)
        elif name == "hidden_states" or name.startswith("past_key_values."):
            a = torch.randn(a.shape, generator=g).to(dtype)
        elif lora and name.endswith((".lora_A.weight", ".lora_B.weight")):
            a = (torch.randn(a.shape, generator=g) * 0.05).to(dtype)
        elif name == "position_ids":
            a = a + fwd.spec.past_len
        out.append(a)
    return tuple(out)


def expectations(
    fwd: Any, rank: int, dtype: torch.dtype, integer_lora: bool
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(ONNX feeds, the model's own outputs) for one graph, computed eagerly."""
    args = _random_inputs(fwd, rank, dtype, not integer_lora)
    installed = fwd.installed() if hasattr(fwd, "installed") else contextlib.nullcontext()
    with torch.no_grad(), installed:
        outs = fwd(*args)
    skip = (".lora_A.weight", ".lora_B.weight") if integer_lora else ()
    feeds = {n: a.numpy() for n, a in zip(fwd.input_names, args, strict=True) if not (skip and n.endswith(skip))}
    return feeds, [o.float().numpy() for o in outs]


def compare(path: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray], model_type: str, precision: str) -> None:
    """Run the saved graph on ``feeds``; refuse (exit 2) when an output differs from ``want``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    takes = {i.name for i in [*s.get_inputs(), *s.get_overridable_initializers()]}
    got = s.run(None, {k: v for k, v in feeds.items() if k in takes})
    names = [o.name for o in s.get_outputs()]
    tol = TOLERANCE.get(precision, TOLERANCE["fp16"])
    for name, g, w in zip(names, got, want, strict=True):
        g = np.asarray(g, np.float64)
        diff = float(np.abs(g - w).max()) if g.size else 0.0
        if not (np.isfinite(g).all() and diff <= tol * max(1.0, float(np.abs(w).max()))):
            raise UsageError(
                f"model_type {model_type!r}",
                f"the exported graph {path.name} does not reproduce the model: output {name} differs by {diff:.3g} "
                "(an op the ONNX exporter translates differently from torch)",
            )
