"""Small synthetic LoRA-ready graphs and PEFT-layout adapters, for the demo, tests and benchmarks.

The graph computes, for every attachment point ``i``, ``out_i = x @ W_i + lora_alpha * (x @ A_i) @ B_i``
with canonical LoRA input names (docs/conventions.md) and zero defaults, so a run without adapter is the
base. :func:`reference` computes the same thing from PEFT-layout tensors in numpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file


def module_paths(mods: Sequence[str] = ("q_proj", "v_proj"), layers: int = 2) -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}" for i in range(layers) for m in mods]


def write_base(
    path: str | Path,
    mps: Sequence[str],
    d: int = 64,
    max_rank: int = 16,
    seed: int = 7,
    dtype: Any = np.float32,
    max_adapters: int | None = None,
) -> dict[str, np.ndarray]:
    """Write the synthetic base graph; returns its frozen weights per module path. ``max_adapters`` N
    gives it alpha slots: ``lora_alpha [1, N]`` and per module ``<mp>.lora_indices [1, R]``, the branch
    ``((x @ A) * alpha[indices]) @ B`` (the structure ``base export --max-adapters`` writes)."""
    import onnx
    from onnx import helper as h
    from onnx import numpy_helper as nh

    et = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(seed)
    W = {mp: (rng.standard_normal((d, d)) * 0.1).astype(dtype) for mp in mps}
    n = max_adapters
    alpha_shape = [1, n] if n else [1]
    inputs = [h.make_tensor_value_info("x", et, ["batch", d]), h.make_tensor_value_info("lora_alpha", et, alpha_shape)]
    inits = [nh.from_array(np.ones(alpha_shape, dtype), "lora_alpha")]
    nodes, outputs = [], []
    if n:
        inits.append(nh.from_array(np.zeros((1, 1), dtype), "zero_slot"))
        nodes.append(h.make_node("Concat", ["lora_alpha", "zero_slot"], ["alpha_padded"], axis=1))
    for i, mp in enumerate(mps):
        a, b = f"{mp}.lora_A.weight", f"{mp}.lora_B.weight"
        inputs += [h.make_tensor_value_info(a, et, [d, max_rank]), h.make_tensor_value_info(b, et, [max_rank, d])]
        inits += [
            nh.from_array(W[mp], f"W{i}"),
            nh.from_array(np.zeros((d, max_rank), dtype), a),
            nh.from_array(np.zeros((max_rank, d), dtype), b),
        ]
        if n:
            idx = f"{mp}.lora_indices"
            inputs.append(h.make_tensor_value_info(idx, onnx.TensorProto.INT64, [1, max_rank]))
            inits.append(nh.from_array(np.full((1, max_rank), n, np.int64), idx))
            nodes += [
                h.make_node("MatMul", ["x", f"W{i}"], [f"xw{i}"]),
                h.make_node("MatMul", ["x", a], [f"xa{i}"]),
                h.make_node("Gather", ["alpha_padded", idx], [f"g{i}"], axis=1),  # [1, 1, R]
                h.make_node("Squeeze", [f"g{i}", "axis0"], [f"cols{i}"]),  # [1, R]
                h.make_node("Mul", [f"xa{i}", f"cols{i}"], [f"xas{i}"]),
                h.make_node("MatMul", [f"xas{i}", b], [f"s{i}"]),
                h.make_node("Add", [f"xw{i}", f"s{i}"], [f"out{i}"]),
            ]
        else:
            nodes += [
                h.make_node("MatMul", ["x", f"W{i}"], [f"xw{i}"]),
                h.make_node("MatMul", ["x", a], [f"xa{i}"]),
                h.make_node("MatMul", [f"xa{i}", b], [f"xab{i}"]),
                h.make_node("Mul", [f"xab{i}", "lora_alpha"], [f"s{i}"]),
                h.make_node("Add", [f"xw{i}", f"s{i}"], [f"out{i}"]),
            ]
        outputs.append(h.make_tensor_value_info(f"out{i}", et, ["batch", d]))
    if n:
        inits.append(nh.from_array(np.array([0], np.int64), "axis0"))
    g = h.make_graph(nodes, "loramgr_synthetic_base", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="loramgr.testing.synth")
    m.ir_version = 8
    onnx.save(m, str(path))
    return W


def adapter_tensors(
    mps: Sequence[str],
    r: int,
    d: int = 64,
    seed: int = 0,
    scale: float = 0.1,
    dtype: Any = np.float32,
    adapter_name: str | None = None,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seg = f".{adapter_name}" if adapter_name else ""
    t: dict[str, np.ndarray] = {}
    for mp in mps:
        t[f"base_model.model.{mp}.lora_A{seg}.weight"] = (rng.standard_normal((r, d)) * scale).astype(dtype)
        t[f"base_model.model.{mp}.lora_B{seg}.weight"] = (rng.standard_normal((d, r)) * scale).astype(dtype)
    return t


def peft_config(r: int, alpha: float, targets: Sequence[str], **extra: Any) -> dict[str, Any]:
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "loramgr-synthetic",
    }
    cfg.update(extra)
    return cfg


def write_adapter(dirpath: str | Path, tensors: dict[str, np.ndarray], config: dict[str, Any] | None) -> Path:
    """A PEFT adapter directory (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    if config is not None:
        (d / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return d


def reference(
    x: np.ndarray, W: dict[str, np.ndarray], tensors: dict[str, np.ndarray], scaling: float, strength: float = 1.0
) -> list[np.ndarray]:
    """Expected outputs of the synthetic base with PEFT-layout ``tensors`` at ``scaling`` (alpha/r)."""
    outs = []
    for mp, w in W.items():
        y = x.astype(np.float64) @ w.astype(np.float64)
        A = tensors.get(f"base_model.model.{mp}.lora_A.weight")
        B = tensors.get(f"base_model.model.{mp}.lora_B.weight")
        if A is not None and B is not None:
            y = y + strength * scaling * ((x.astype(np.float64) @ A.astype(np.float64).T) @ B.astype(np.float64).T)
        outs.append(y)
    return outs


def write_large_adapter(path: str | Path, size: int, seed: int = 0) -> Path:
    """A single-tensor safetensors adapter of ``size`` bytes (a multiple of 16 MiB) of random finite
    float32 values, written in 16 MiB blocks without holding it in memory: the register benchmarks and
    bounds tests."""
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [size // 4 // 256, 256], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    block = np.random.default_rng(seed).standard_normal(1 << 22, dtype=np.float32).tobytes()
    p = Path(path)
    with open(p, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        for _ in range(size // len(block)):
            fh.write(block)
    return p
