"""Rewrites that make an exported graph compile on Qualcomm's HTP backend, applied to every graph
``base export`` writes. Each is exact algebra (or within one rounding) on the same values.

Found by bisecting the demo's tiny Llama on the QNN EP (onnxruntime-qnn 2.7, QNN 2.51), CPU fallback
off: the finalize failed with ``QNN_COMMON_ERROR_MEM_ALLOC`` (code 1002) at RMSNorm. The exporter
writes RMSNorm as ``x * Reciprocal(Sqrt(mean(Pow(x, 2)) + eps))``; HTP fuses that multiply-by-rsqrt
into its own RmsNorm kernel, and that kernel fails to finalize at these shapes. ``x / Sqrt(...)``
is the same value and is not fused; ``Pow(x, 2)`` becomes ``Mul(x, x)``, which HTP runs natively.
In the simulator's fp32 mode (``--htp-fp32``) a tanh-approximated Gelu fails the same way, so it is
written as the sigmoid form it equals. The export itself writes the mask bias as a product and the
alpha-slot pick as a one-hot MatMul for the same reason (an fp32 Where / Gather there).
The same norm pattern is in every family the export takes (Llama, Qwen, Gemma's ``1 + w`` norms,
Qwen3's per-head q/k norms), so the passes match the pattern, not a family.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _producers(g: Any) -> dict[str, Any]:
    return {o: n for n in g.node for o in n.output}


def _const(g: Any, name: str, producers: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    p = producers.get(name)
    if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
        return numpy_helper.to_array(p.attribute[0].t)
    return None


def rsqrt_to_div(model: Any) -> int:
    """``Mul(x, Reciprocal(Sqrt(a)))`` -> ``Div(x, Sqrt(a))`` wherever every user of the reciprocal is
    a Mul; returns how many reciprocals went."""
    g = model.graph
    prod = _producers(g)
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    done = 0
    for rec in [n for n in g.node if n.op_type == "Reciprocal"]:
        sq = prod.get(rec.input[0])
        mults = users.get(rec.output[0], [])
        if sq is None or sq.op_type != "Sqrt" or not mults or any(m.op_type != "Mul" for m in mults):
            continue
        if any(o.name == rec.output[0] for o in g.output):
            continue
        for m in mults:
            other = m.input[1] if m.input[0] == rec.output[0] else m.input[0]
            m.op_type = "Div"
            del m.input[:]
            m.input.extend([other, sq.output[0]])
        g.node.remove(rec)
        done += 1
    return done


def pow2_to_mul(model: Any) -> int:
    """``Pow(x, 2)`` -> ``Mul(x, x)``; returns how many."""
    g = model.graph
    prod = _producers(g)
    done = 0
    for n in g.node:
        if n.op_type == "Pow":
            e = _const(g, n.input[1], prod)
            if e is not None and e.size == 1 and float(e.reshape(-1)[0]) == 2.0:
                x = n.input[0]
                n.op_type = "Mul"
                del n.input[:]
                n.input.extend([x, x])
                done += 1
    return done


def gelu_tanh_to_sigmoid(model: Any) -> int:
    """``Gelu(x, approximate="tanh")`` -> ``x * Sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))``: exact, as
    ``0.5 (1 + tanh z) = sigmoid(2 z)``. HTP fuses both the op and its written-out tanh form into a
    Gelu kernel that fails to finalize in the simulator's fp32 mode; the sigmoid form is not fused."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    done = 0
    for n in list(g.node):
        approx = next((a.s for a in n.attribute if a.name == "approximate"), b"none")
        if n.op_type != "Gelu" or approx != b"tanh":
            continue
        p = f"{n.name or n.output[0]}/htp_gelu"
        dtype = _elem_type(model, n.input[0])
        np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(0.044715, np_dtype), f"{p}/k"),
                numpy_helper.from_array(np.array(1.0, np_dtype), f"{p}/one"),
                numpy_helper.from_array(np.array(2 * np.sqrt(2 / np.pi), np_dtype), f"{p}/c"),
            ]
        )
        x = n.input[0]
        new = [
            helper.make_node("Mul", [x, x], [f"{p}/x2"], name=f"{p}/x2"),
            helper.make_node("Mul", [f"{p}/x2", f"{p}/k"], [f"{p}/kx2"], name=f"{p}/kx2"),
            helper.make_node("Add", [f"{p}/kx2", f"{p}/one"], [f"{p}/s"], name=f"{p}/s"),
            helper.make_node("Mul", [x, f"{p}/s"], [f"{p}/xs"], name=f"{p}/xs"),
            helper.make_node("Mul", [f"{p}/xs", f"{p}/c"], [f"{p}/z"], name=f"{p}/z"),
            helper.make_node("Sigmoid", [f"{p}/z"], [f"{p}/sig"], name=f"{p}/sig"),
            helper.make_node("Mul", [x, f"{p}/sig"], [n.output[0]], name=f"{p}/out"),
        ]
        at = list(g.node).index(n)
        g.node.remove(n)
        for j, m in enumerate(new):
            g.node.insert(at + j, m)
        done += 1
    return done


def _elem_type(model: Any, name: str) -> int:
    """The element type of a value (float32 when shape inference cannot tell)."""
    import onnx

    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.name == name:
            return int(vi.type.tensor_type.elem_type)
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in inferred.graph.value_info:
        if vi.name == name:
            return int(vi.type.tensor_type.elem_type)
    return int(onnx.TensorProto.FLOAT)


#: ops transformers' bf16 code paths use (Falcon's ALiBi slopes) that have no bf16 kernel on ORT's CPU or HTP
BF16_ARITHMETIC = ("Mul", "Add", "Sub", "Div", "Neg", "MatMul", "Pow", "Sqrt", "Exp")


def bf16_in_fp32(model: Any) -> int:
    """Arithmetic on bfloat16 values computed in fp32 and rounded back to bfloat16: torch's CPU bf16
    kernels do the same (widen, compute, round), so the values are HF's."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    casts = any(n.op_type == "Cast" and any(a.i == TensorProto.BFLOAT16 for a in n.attribute) for n in g.node)
    if not casts and not any(t.data_type == TensorProto.BFLOAT16 for t in g.initializer):
        return 0  # no bf16 value anywhere: skip the shape inference
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    types |= {t.name: t.data_type for t in g.initializer}
    done = 0
    for node in list(g.node):
        if node.op_type not in BF16_ARITHMETIC or not any(types.get(i) == TensorProto.BFLOAT16 for i in node.input):
            continue
        at = list(g.node).index(node)
        before = []
        for k, x in enumerate(node.input):
            if types.get(x) == TensorProto.BFLOAT16:
                wide = f"{x}_fp32_{node.name or at}_{k}"
                before.append(helper.make_node("Cast", [x], [wide], to=TensorProto.FLOAT, name=f"{wide}_cast"))
                node.input[k] = wide
        out = node.output[0]
        node.output[0] = f"{out}_fp32"
        after = helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.BFLOAT16, name=f"{out}_bf16_cast")
        for j, m in enumerate(before):
            g.node.insert(at + j, m)
        g.node.insert(at + len(before) + 1, after)
        done += 1
    return done


def htp_clean(model: Any) -> dict[str, int]:
    """Every rewrite, in order; returns how often each applied (unused constants are dropped)."""
    done = {
        "rsqrt_to_div": rsqrt_to_div(model),
        "pow2_to_mul": pow2_to_mul(model),
        "gelu_tanh_to_sigmoid": gelu_tanh_to_sigmoid(model),
        "bf16_in_fp32": bf16_in_fp32(model),
    }
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return done
