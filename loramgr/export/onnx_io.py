"""Post-processing of exported graphs: LoRA defaults, and weights written once per part.

Prefill and decode graphs of one part hold the same weights (possibly renamed or transposed by the
exporter's constant folding); their initializers are de-duplicated by content into one external
data file, so the weights exist once on disk and once in a QNN context with weight sharing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

#: initializers smaller than this stay inside the .onnx file (as onnx's own converter does)
INLINE_BELOW = 1024
ALIGN = 64


def add_lora_defaults(
    model: Any,
    lora_shapes: dict[str, tuple[tuple[int, ...], Any]],
    alpha: str | None,
    max_adapters: int | None = None,
    indices: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Give every LoRA input a zero initializer and ``alpha`` a 1.0 one, so a run without an adapter
    is the base model (ORT treats an initializer named like an input as that input's default). With
    alpha slots, ``alpha`` is ``[1, N]`` ones and every slot map points all columns at the zero slot N."""
    from onnx import numpy_helper

    inputs = {i.name for i in model.graph.input}
    have = {t.name for t in model.graph.initializer}
    for name, (shape, dtype) in lora_shapes.items():
        if name in inputs and name not in have:
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, dtype), name))
    for name, shape in (indices or {}).items():
        if name in inputs and name not in have:
            model.graph.initializer.append(numpy_helper.from_array(np.full(shape, max_adapters or 0, np.int64), name))
    if alpha and alpha in inputs and alpha not in have:
        shape = (1, max_adapters) if max_adapters else (1,)
        model.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), alpha))


def strip_dropout(model: Any) -> int:
    """Replace any Dropout (inference: identity) by Identity; returns how many there were."""
    n = 0
    for node in model.graph.node:
        if node.op_type == "Dropout":
            node.op_type = "Identity"
            del node.input[1:]
            del node.output[1:]
            del node.attribute[:]
            n += 1
    return n


def save_sharing_weights(models: dict[str, Any], out_dir: Path, data_name: str) -> dict[str, Any]:
    """Save ``{file_name: ModelProto}`` into ``out_dir`` with one shared external data file.

    Tensors with equal bytes, dtype and shape are stored once. Returns sizes for the caller's
    part-size check."""
    from onnx import TensorProto, numpy_helper

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / data_name
    offsets: dict[tuple[str, int, tuple[int, ...]], tuple[int, int]] = {}
    pos = 0
    with open(data_path, "wb") as data:
        for model in models.values():
            for t in model.graph.initializer:
                if t.data_location == TensorProto.EXTERNAL:
                    raise ValueError(f"initializer {t.name} is already external")
                raw = (
                    t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
                )
                if len(raw) < INLINE_BELOW:
                    continue
                key = (hashlib.sha256(raw).hexdigest(), t.data_type, tuple(t.dims))
                if key not in offsets:
                    pad = (-pos) % ALIGN
                    data.write(b"\0" * pad)
                    pos += pad
                    data.write(raw)
                    offsets[key] = (pos, len(raw))
                    pos += len(raw)
                off, length = offsets[key]
                for fld in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(fld)
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(off)), ("length", str(length))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
    import onnx

    for fname, model in models.items():
        onnx.save_model(model, str(out_dir / fname))
    return {"data": str(data_path), "data_bytes": data_path.stat().st_size, "tensors": len(offsets)}


def quantize_lora_inputs(model: Any, lora_inputs: list[str], bits: int) -> None:
    """Make each LoRA input integer (int8/int16, symmetric) with a per-output-channel ``<name>_scale``
    input feeding ``DequantizeLinear`` (axis 1), so sections carry integer weights plus their
    encodings, as on HTP. int16 uses ONNX Runtime's ``com.microsoft`` DequantizeLinear, which accepts
    int16 at any opset. Defaults: zero codes, unit scales (the default adapter)."""
    from onnx import TensorProto, helper, numpy_helper

    itype, npt = (TensorProto.INT8, np.int8) if bits == 8 else (TensorProto.INT16, np.int16)
    domain = "" if bits == 8 else "com.microsoft"
    if domain and not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    inputs = {i.name: i for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes = []
    for name in lora_inputs:
        vi = inputs[name]
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dq = f"{name}_dequantized"
        for node in model.graph.node:
            for k, x in enumerate(node.input):
                if x == name:
                    node.input[k] = dq
        vi.type.tensor_type.elem_type = itype
        scale = f"{name}_scale"
        model.graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, [dims[1]]))
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(np.zeros(dims, npt), name))
        model.graph.initializer.append(numpy_helper.from_array(np.ones(dims[1], np.float32), scale))
        new_nodes.append(
            helper.make_node("DequantizeLinear", [name, scale], [dq], axis=1, domain=domain, name=f"dq_{name}")
        )
    for n in reversed(new_nodes):
        model.graph.node.insert(0, n)
