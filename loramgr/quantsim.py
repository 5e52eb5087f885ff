"""A plan's quantized model, simulated on ONNX Runtime's CPU: what ``verify`` holds a quantized build
to, and the graph edits AIMET's calibration (``calibration_aimet``) needs.

The simulation applies the encodings a device would (AIMET/QNN convention, ``x = scale * (q +
offset)``, ``q`` in ``[0, 2^bw - 1]``): every activation with an encoding (the base's, overridden by
the adapter's or use case's own) goes through a fake quantizer (divide, round, clip, shift back), and
every base weight with an encoding is replaced by its quantized value. The LoRA weights are the
section's own (integer codes and scales in an int8/int16 build). numpy, onnx and onnxruntime only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr.records import Adapter, Base
from loramgr.reference import peft_factors, reference_for, reference_lora
from loramgr.runtime.generate import Runner
from loramgr.runtime.ort import _lm_graphs

if TYPE_CHECKING:
    from loramgr.runtime import Plan


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two tensors (flattened, in float64): 0 when either holds NaN or Inf, 1 when both are 0."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return 1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-300))


def downstream(model: Any, sources: Iterable[str]) -> set[str]:
    """Every tensor whose value depends on ``sources`` (graph inputs): the activations an adapter
    changes when ``sources`` are its LoRA inputs."""
    reached = set(sources)
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached - set(sources)


def float_lora(model: Any) -> int:
    """Undo ``base export --quantized-lora``: each integer LoRA input feeding a ``DequantizeLinear``
    becomes a float input (zero default) read where the dequantized value was, and its ``_scale``
    input goes. A float graph is what AIMET simulates; its own quantizers play the integer codes."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.name.startswith("dq_")]
    inputs = {i.name: i for i in g.input}
    inits = {t.name: t for t in g.initializer}
    done = 0
    for node in dq:
        name, scale, out = node.input[0], node.input[1], node.output[0]
        if name not in inputs:
            continue
        for other in g.node:
            for k, x in enumerate(other.input):
                if x == out:
                    other.input[k] = name
        vi = inputs[name]
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(np.zeros(dims, np.float32), name))
        g.node.remove(node)
        for seq in (g.input, g.initializer):
            for item in [x for x in seq if x.name == scale]:
                seq.remove(item)
        done += 1
    return done


def _fq_nodes(x: str, out: str, e: Mapping[str, Any], tag: str) -> tuple[list[Any], list[Any]]:
    """Nodes and constants computing ``out = fake_quant(x)`` with one encoding."""
    from onnx import helper, numpy_helper

    levels = 2 ** int(e["bitwidth"]) - 1
    consts = {
        "s": np.float32(e["scale"]),
        "o": np.float32(e["offset"]),
        "lo": np.float32(0.0),
        "hi": np.float32(levels),
    }
    names = {k: f"{tag}_{k}" for k in consts}
    inits = [numpy_helper.from_array(np.asarray(v), names[k]) for k, v in consts.items()]
    nodes = [
        helper.make_node("Div", [x, names["s"]], [f"{tag}_d"]),
        helper.make_node("Round", [f"{tag}_d"], [f"{tag}_r"]),
        helper.make_node("Sub", [f"{tag}_r", names["o"]], [f"{tag}_u"]),
        helper.make_node("Clip", [f"{tag}_u", names["lo"], names["hi"]], [f"{tag}_c"]),
        helper.make_node("Add", [f"{tag}_c", names["o"]], [f"{tag}_a"]),
        helper.make_node("Mul", [f"{tag}_a", names["s"]], [out]),
    ]
    return nodes, inits


def fake_quantized(
    model: Any,
    activations: Mapping[str, Sequence[Mapping[str, Any]]],
    weights: Mapping[str, Sequence[Mapping[str, Any]]] = {},
) -> int:
    """Insert a fake quantizer after every float tensor of ``activations`` (per-tensor encodings:
    the first entry) and quantize every initializer of ``weights`` in place (per channel on the axis
    whose length is the entries' count). Returns how many tensors it touched."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    produced = {o: n for n in g.node for o in n.output}
    float_inputs = {i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    inputs = {i.name for i in g.input}
    # a constant AIMET quantizes as an activation (an embedding table): its value, quantized in place
    constants = {t.name for t in g.initializer if t.name not in inputs and t.data_type == TensorProto.FLOAT}
    weights = {**{k: v[:1] for k, v in activations.items() if k in constants and k not in weights}, **weights}
    added_nodes: list[tuple[Any, list[Any]]] = []
    count = 0
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    # encodings are stored per name: one of another graph's tensors may share a name with a non-float one here
    not_float = {
        v.name
        for v in [*inferred.value_info, *inferred.output]
        if v.type.tensor_type.elem_type not in (0, TensorProto.FLOAT)
    }
    for i, (name, entries) in enumerate(sorted(activations.items())):
        e = entries[0]
        if e.get("dtype", "int") != "int" or not (name in produced or name in float_inputs) or name in not_float:
            continue
        tag = f"loramgr_fq{i}"
        if name in produced:  # the producer writes <name>_raw, the fake quantizer writes <name>
            node = produced[name]
            node.output[list(node.output).index(name)] = f"{tag}_raw"
            nodes, inits = _fq_nodes(f"{tag}_raw", name, e, tag)
            added_nodes.append((node, nodes))
        else:  # a graph input: its readers read the fake quantizer's output
            for n in g.node:
                for k, x in enumerate(n.input):
                    if x == name:
                        n.input[k] = f"{tag}_out"
            nodes, inits = _fq_nodes(name, f"{tag}_out", e, tag)
            added_nodes.append((None, nodes))
        g.initializer.extend(inits)
        count += 1
    for after, nodes in added_nodes:
        at = 0 if after is None else list(g.node).index(after) + 1
        for j, n in enumerate(nodes):
            g.node.insert(at + j, n)
    inits_by_name = {t.name: t for t in g.initializer}
    for name, entries in weights.items():
        t = inits_by_name.get(name)
        if t is None or t.data_type != TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(t).astype(np.float64)
        if len(entries) > 1 and not (w.ndim and len(entries) in (w.shape[0], w.shape[-1])):
            continue  # per-channel encodings of another graph's tensor of this name (stored per name)
        t.CopyFrom(numpy_helper.from_array(quantized_value(w, entries).astype(np.float32), name))
        count += 1
    return count


def quantized_value(w: np.ndarray, entries: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``w`` through its encodings (one per channel on the axis of that length, or one)."""
    n = len(entries)
    axis = next((a for a in (w.ndim - 1, 0) if w.ndim and w.shape[a] == n), None) if n > 1 else None
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = n
    s = np.array([float(e["scale"]) for e in entries]).reshape(shape)
    o = np.array([float(e["offset"]) for e in entries]).reshape(shape)
    levels = 2 ** int(entries[0]["bitwidth"]) - 1
    out: np.ndarray = (np.clip(np.round(w / s) - o, 0, levels) + o) * s
    return out


#: verify's criterion for a quantized build, per scheme (LoRA weight bits, activation bits of the stored
#: encodings; "w8" alone: integer LoRA weights, float activations): (min cosine of the simulated quantized
#: logits against PEFT fp32, min top-1 agreement, min cosine of the adapter's effect with its encodings
#: against with its exact weights in the same simulation). The first two bound the whole model's
#: quantization, loosely (the base's weights and activations dominate it); the third bounds what is the
#: adapter's own, tightly: a wrong adapter encoding shows there. docs/quantization.md gives the measurements.
THRESHOLDS = {
    "w8": (0.999, 0.9, 0.9995),
    "w16": (0.9999, 0.95, 0.99999),
    "w8a16": (0.995, 0.6, 0.9995),
    "w16a16": (0.995, 0.6, 0.99999),
    "w8a8": (0.98, 0.5, 0.998),
    "w16a8": (0.98, 0.5, 0.998),
}


def scheme_of(plan: Plan) -> str | None:
    """A plan's quantization scheme (``w8a16``, ...; ``w8`` with float activations), None for a float
    build: the LoRA inputs' integer width and the widest activation encoding stored for the base."""
    wbits = {"int8": 8, "int16": 16}.get(str(plan.base.get("precision")))
    if wbits is None:
        return None
    acts = plan.default_adapter.io_encodings() or {}
    bits = [
        int(e[0]["bitwidth"]) for e in acts.values() if isinstance(e, list) and e and e[0].get("dtype", "int") == "int"
    ]
    return f"w{wbits}" + (f"a{max(bits)}" if bits else "")


class QuantSim:
    """Opens a plan's graph as its quantized simulation for one entry (adapter or use case): the
    ``htp`` argument of :class:`loramgr.runtime.ort.LoraSession` (anything with ``open(plan, graph)``)."""

    def __init__(
        self,
        plan: Plan,
        entry: str,
        base_weights: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        exact_lora: bool = False,
    ) -> None:
        """``base_weights``: the base's own weight encodings (the registry's default-owner param
        encodings that are not LoRA inputs: the plan carries only the LoRA inputs'). ``exact_lora``:
        the graphs take float LoRA inputs (``float_lora``), for feeding an adapter's exact weights."""
        self.exact_lora = exact_lora
        self.activations = dict(plan.default_adapter.io_encodings() or {}) | dict(
            plan.entry(entry).io_encodings() or {}
        )
        self.weights = dict(base_weights)
        self._tmp = tempfile.TemporaryDirectory(prefix="loramgr-quantsim-")

    @property
    def quantized(self) -> bool:
        """Whether there is anything to simulate (activation or base weight encodings)."""
        return bool(self.activations or self.weights)

    def open(self, plan: Plan, graph: str) -> tuple[Path, Any]:
        import onnx
        import onnxruntime as ort

        src = plan.graph_file(graph)
        model = onnx.load(str(src))  # with its weights: the base weights are quantized in place
        if self.exact_lora:
            float_lora(model)
        fake_quantized(model, self.activations, self.weights)
        dest = Path(self._tmp.name) / f"{graph}.sim.onnx"
        onnx.save(model, str(dest), save_as_external_data=True, location=f"{graph}.sim.data")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return dest, ort.InferenceSession(str(dest), so, providers=["CPUExecutionProvider"])


def exact_weights_chain(
    plan: Plan,
    base: Base,
    entry: str,
    members: Sequence[tuple[Adapter, float]],
    base_weights: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[Runner]:
    """The plan's prefill chain in the quantized simulation of ``entry`` (its activation encodings,
    the base's weight encodings), but fed the members' exact weights (raw PEFT factors, float, from
    :mod:`loramgr.reference`) instead of its sections: the same model with the adapter unquantized.
    Against it, the adapter's own quantization (its weight encodings) shows alone."""
    sim = QuantSim(plan, entry, base_weights, exact_lora=True)
    factors = [peft_factors(Path(ad.store_path), ad.config_json, float(ad.lora_alpha or 0.0)) for ad, _ in members]
    alphas = [a for _, a in members]
    runners = []
    for g in _lm_graphs(plan)[0]:
        _, session = sim.open(plan, g)
        points = base.points_of(g)
        refs = {ap.module_path: [reference_for(f, ap.module_path) for f in factors] for ap in points}
        lora = reference_lora(points, refs, base.max_adapters)
        if base.alpha_tensor:
            shape = (1, base.max_adapters) if base.max_adapters else (1,)
            value = np.zeros(shape, np.float32)
            value.reshape(-1)[: len(alphas)] = alphas[: value.size]
            lora[base.alpha_tensor] = value
        runners.append(Runner.from_session(session, extra=lora))
    return runners
