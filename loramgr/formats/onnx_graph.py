"""Inspection of LoRA-ready ONNX graphs without loading external data.

A LoRA-ready graph exposes, for every attachment point, the graph inputs
``<module_path>.lora_A.weight`` ``[in, r]`` and ``<module_path>.lora_B.weight`` ``[r, out]``
(ONNX Runtime / Olive convention, docs/conventions.md), and an alpha input (``lora_alpha``, shape ``[1]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError
from loramgr.formats.peft import MAX_RANK
from loramgr.infra.files import regular_file

SUFFIX_A = ".lora_A.weight"
SUFFIX_B = ".lora_B.weight"
SUFFIX_INDICES = ".lora_indices"

ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}
LORA_INPUT_DTYPES = ("float32", "float16", "int8", "int16")
PRECISION_OF = {"float32": "fp32", "float16": "fp16", "int8": "int8", "int16": "int16"}


@dataclass(frozen=True)
class AttachmentPointInfo:
    module_path: str
    tensor_a: str
    tensor_b: str
    in_features: int
    out_features: int
    rank: int
    dtype: str
    tensor_indices: str | None = None  # int64 [1, R] rank column -> alpha slot (graphs with alpha slots)


@dataclass
class GraphInfo:
    path: Path
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    defaults: set[str]
    external_files: list[str]
    attachment_points: dict[str, AttachmentPointInfo] = field(default_factory=dict)

    def io(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs, "defaults": sorted(self.defaults)}


def _value_info(v: Any) -> dict[str, Any]:
    t = v.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return {"dtype": ELEM_TYPES.get(t.elem_type, f"type{t.elem_type}"), "shape": dims}


def _check_location(model_path: Path, loc: str) -> None:
    if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
        raise InvalidInputError(str(model_path), f"external data location {loc!r} escapes the model directory")
    real = Path(os.path.realpath(model_path.parent / loc))
    if not real.is_relative_to(Path(os.path.realpath(model_path.parent))):
        raise InvalidInputError(str(model_path), f"external data {loc!r} is a symlink outside the model directory")
    if not real.is_file():
        raise InvalidInputError(str(model_path), f"external data file {loc!r} is missing")


def inspect_graph(path: str | os.PathLike[str]) -> GraphInfo:
    """Read a graph's signature and attachment points; tensors stored externally are not loaded."""
    import onnx

    p = Path(path)
    if regular_file(p, "ONNX file", missing_ok=True) is None:
        raise InvalidInputError(str(p), "no such ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise InvalidInputError(str(p), f"not a readable ONNX model ({type(e).__name__})") from None
    g = model.graph
    if not g.input and not g.output:
        raise InvalidInputError(str(p), "ONNX model has no graph inputs or outputs")
    ext: list[str] = []
    for init in list(g.initializer):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), "")
            if loc not in ext:
                _check_location(p, loc)
                ext.append(loc)
    inputs = {i.name: _value_info(i) for i in g.input}
    outputs = {o.name: _value_info(o) for o in g.output}
    defaults = {i.name for i in g.initializer} & set(inputs)
    info = GraphInfo(p, inputs, outputs, defaults, ext)
    a_names = {n[: -len(SUFFIX_A)]: n for n in inputs if n.endswith(SUFFIX_A)}
    b_names = {n[: -len(SUFFIX_B)]: n for n in inputs if n.endswith(SUFFIX_B)}
    for mp in sorted(set(a_names) | set(b_names)):
        if mp not in a_names or mp not in b_names:
            missing = SUFFIX_B if mp in a_names else SUFFIX_A
            raise InvalidInputError(str(p), f"LoRA input for {mp} has no partner {mp}{missing}")
        a, b = inputs[a_names[mp]], inputs[b_names[mp]]
        for nm, vi in ((a_names[mp], a), (b_names[mp], b)):
            if len(vi["shape"]) != 2 or not all(isinstance(d, int) and d > 0 for d in vi["shape"]):
                raise InvalidInputError(str(p), f"LoRA input {nm} must have a static 2-D shape, has {vi['shape']}")
        (in_f, r_a), (r_b, out_f) = a["shape"], b["shape"]
        if r_a != r_b:
            raise InvalidInputError(str(p), f"{mp}: lora_A rank {r_a} != lora_B rank {r_b}")
        if a["dtype"] != b["dtype"]:
            raise InvalidInputError(str(p), f"{mp}: lora_A is {a['dtype']} but lora_B is {b['dtype']}")
        if a["dtype"] not in LORA_INPUT_DTYPES:
            raise InvalidInputError(
                str(p),
                f"LoRA input {a_names[mp]} is {a['dtype']}; LoRA inputs must be float32 or "
                "float16 (or int8/int16 with per-channel `_scale` inputs)",
            )
        if a["dtype"] in ("int8", "int16") and not {a_names[mp] + "_scale", b_names[mp] + "_scale"} <= set(inputs):
            raise InvalidInputError(str(p), f"integer LoRA input {a_names[mp]} has no `{a_names[mp]}_scale` input")
        if r_a > MAX_RANK:
            raise InvalidInputError(str(p), f"LoRA input {a_names[mp]} has rank {r_a}; at most {MAX_RANK} is supported")
        idx_name = mp + SUFFIX_INDICES
        idx = inputs.get(idx_name)
        if idx is not None and (idx["dtype"] != "int64" or idx["shape"] != [1, r_a]):
            raise InvalidInputError(str(p), f"{idx_name} must be int64 [1, {r_a}], is {idx['dtype']} {idx['shape']}")
        info.attachment_points[mp] = AttachmentPointInfo(
            mp, a_names[mp], b_names[mp], in_f, out_f, r_a, a["dtype"], idx_name if idx is not None else None
        )
    return info


def alpha_slots(info: GraphInfo, alpha_input: str) -> int | None:
    """N of an alpha input shaped ``[1, N]`` (alpha slots for use cases); None for a scalar ``[1]``."""
    spec = info.inputs.get(alpha_input)
    if spec is None or spec["shape"] in ([1], []):
        return None
    shape = spec["shape"]
    if len(shape) != 2 or shape[0] != 1 or not isinstance(shape[1], int) or not 0 < shape[1] <= 1024:
        raise InvalidInputError(str(info.path), f"{alpha_input} must be [1] or [1, N] with N <= 1024, is {shape}")
    return int(shape[1])


def node_outputs(path: str | os.PathLike[str]) -> set[str]:
    """Names of every tensor a node of the graph produces (intermediate quantization points)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise InvalidInputError(str(path), f"not a readable ONNX model ({type(e).__name__})") from None
    return {o for n in model.graph.node for o in n.output if o}


def with_extra_outputs(src: str | os.PathLike[str], dest: str | os.PathLike[str], names: list[str]) -> list[str]:
    """Copy a graph (next to its external data) exposing intermediate tensors as extra outputs; returns
    the names that exist in this graph."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    have = {o for n in model.graph.node for o in n.output}
    outs = {o.name for o in model.graph.output}
    added = [n for n in names if n in have and n not in outs]
    for n in added:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    onnx.save(model, str(dest))
    return added
