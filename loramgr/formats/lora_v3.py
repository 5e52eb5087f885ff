"""The QNN LoRA v3 model creator's ONNX inputs, made from a LoRA-ready graph (docs/qairt-lora-v3.md).

The creator takes N + 1 models of one base: the base without LoRA branches, and one model per use
case whose branches hold that use case's real-rank weights as initializers,
``x -> MatMul(A) -> Mul(scaling) -> MatMul(B) -> Add`` onto the output of the base projection, the
adapters of a use case rank-concatenated (PEFT style, each column's Mul value its adapter's scaling).
Adapters name their attachment points by the ONNX node name of that base projection
(``target_operator_names``).

Pure functions over ``onnx.ModelProto`` and numpy arrays. A loramgr graph carries, per attachment
point, LoRA *inputs* (``<module>.lora_A.weight``, ``.lora_B.weight``, optionally ``.lora_indices``,
``lora_alpha``, integer ``_scale`` inputs); :func:`strip_lora` finds where each branch is added to the
base projection, removes the branch and names the projection node ``/<module/path>/MatMul`` (the
naming of torch's ONNX exporter, so the names read like the module paths). :func:`with_use_case`
adds constant branches back.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loramgr.errors import IncompatibleError

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto


@dataclass(frozen=True)
class Point:
    """Where one attachment point's branch goes in the stripped graph."""

    module_path: str
    op_name: str  # the base projection's MatMul node (target_operator_names)
    x: str  # the projection's input activation
    y: str  # the tensor the branch is added to (the projection's output, after any bias)


@dataclass(frozen=True)
class Branch:
    """A use case's weights at one point: ``A [in, r]``, ``B [r, out]``, ``scaling [r]`` (unscaled
    B; each rank column's Mul value is its adapter's PEFT scaling)."""

    a: np.ndarray
    b: np.ndarray
    scaling: np.ndarray


def op_name(module_path: str) -> str:
    return "/" + module_path.replace(".", "/") + "/MatMul"


def _index(graph: GraphProto) -> tuple[dict[str, NodeProto], dict[str, list[NodeProto]]]:
    prod: dict[str, NodeProto] = {}
    cons: dict[str, list[NodeProto]] = {}
    for n in graph.node:
        for o in n.output:
            prod[o] = n
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return prod, cons


def _through(cons: Mapping[str, list[NodeProto]], name: str, ops: tuple[str, ...]) -> str:
    """Follow single-consumer chains of ``ops`` (DequantizeLinear, Cast) from ``name``."""
    while True:
        nxt = cons.get(name, [])
        if len(nxt) == 1 and nxt[0].op_type in ops:
            name = nxt[0].output[0]
        else:
            return name


def _projection(prod: Mapping[str, NodeProto], y: str, x: str) -> NodeProto | None:
    """The MatMul of ``x`` whose output is ``y``, directly or through one bias Add."""
    n = prod.get(y)
    if n is not None and n.op_type == "Add":
        n = next((prod[i] for i in n.input if i in prod and prod[i].op_type == "MatMul"), None)
    return n if n is not None and n.op_type == "MatMul" and n.input[0] == x else None


def _find(
    prod: Mapping[str, NodeProto],
    cons: Mapping[str, list[NodeProto]],
    module_path: str,
    a_input: str,
    graph_name: str,
) -> tuple[NodeProto, str, str, str]:
    """(the base projection node, its input x, the tensor y the branch is added to, the Add's output)."""
    where = f"{graph_name}: attachment point {module_path}"
    a = _through(cons, a_input, ("DequantizeLinear", "Cast"))
    mm_a = [n for n in cons.get(a, []) if n.op_type == "MatMul"]
    if len(mm_a) != 1:
        raise IncompatibleError(where, "its lora_A input does not feed exactly one MatMul")
    x, t = mm_a[0].input[0], mm_a[0].output[0]
    for _ in range(6):  # forward: Mul (alpha or slot alphas), MatMul (B), Mul, then the Add
        nxt = cons.get(t, [])
        if len(nxt) != 1 or nxt[0].op_type not in ("Add", "Mul", "MatMul", "Cast"):
            break
        n = nxt[0]
        if n.op_type == "Add":
            other = [i for i in n.input if i != t]
            proj = _projection(prod, other[0], x) if len(other) == 1 else None
            if proj is None:
                raise IncompatibleError(
                    where, "the LoRA branch is not added to a MatMul of the same input (v3 attaches to MatMul)"
                )
            return proj, x, other[0], n.output[0]
        t = n.output[0]
    raise IncompatibleError(where, "its LoRA branch is not MatMul -> [Mul] -> MatMul -> Add")


def _rename_uses(graph: GraphProto, renames: Mapping[str, str]) -> None:
    """Every node reading a tensor of ``renames`` reads its new name instead (one pass over the graph;
    none of them is a graph output)."""
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in renames:
                n.input[k] = renames[i]


def _prune(graph: GraphProto) -> None:
    """Drop nodes nothing reads (until none is left), then inputs and initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        live = [n for n in graph.node if any(o in used for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = {i for n in graph.node for i in n.input} | outputs
    for coll in (graph.input, graph.initializer):
        keep = [t for t in coll if t.name in used]
        del coll[:]
        coll.extend(keep)


def strip_lora(model: ModelProto, points: Sequence[tuple[str, str]], graph_name: str) -> dict[str, Point]:
    """Remove the LoRA branches of ``model`` (in place) and name each base projection
    ``/<module/path>/MatMul``. ``points`` are (module path, lora_A input name). Returns the points."""
    graph = model.graph
    prod, cons = _index(graph)  # the branches are disjoint: one index serves every point
    outputs = {o.name for o in graph.output}
    found: dict[str, Point] = {}
    renames: dict[str, str] = {}
    for module_path, a_input in points:
        proj, x, y, add_out = _find(prod, cons, module_path, a_input, graph_name)
        proj.name = op_name(module_path)
        if add_out in outputs:  # a graph output keeps its name (the model's interface): the Add passes y on
            add = prod[add_out]
            add.op_type = "Identity"
            del add.input[:]
            add.input.append(y)
        else:  # the Add's readers read y
            renames[add_out] = y
        found[module_path] = Point(module_path, proj.name, x, y)
    _rename_uses(graph, renames)
    names = [n.name for n in graph.node if n.name]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IncompatibleError(graph_name, f"node name {dupes[0]} is not unique after naming the projections")
    _prune(graph)
    return found


def with_use_case(stripped: ModelProto, points: Mapping[str, Point], branches: Mapping[str, Branch]) -> ModelProto:
    """A copy of the stripped model with constant LoRA branches for ``branches`` (module -> weights):
    ``y + MatMul(Mul(MatMul(x, A), scaling), B)``. Initializer and node names carry the point's op
    name, so every use-case model names its branches alike."""
    from onnx import ModelProto, helper, numpy_helper

    m = ModelProto()
    m.CopyFrom(stripped)
    graph = m.graph
    dtype = {1: np.float32, 10: np.float16}
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.input) + list(graph.value_info)}
    renames: dict[str, str] = {}
    added = []
    for module, br in branches.items():
        p = points[module]
        np_dt = dtype.get(elem.get(p.x, 1), np.float32)
        pre = p.op_name.rsplit("/", 1)[0]
        names = {k: f"{pre}/lora_{k}" for k in ("A", "B", "scaling", "xa", "xs", "delta", "out")}
        graph.initializer.extend(
            [
                numpy_helper.from_array(br.a.astype(np_dt), names["A"]),
                numpy_helper.from_array(br.b.astype(np_dt), names["B"]),
                numpy_helper.from_array(br.scaling.astype(np_dt), names["scaling"]),
            ]
        )
        renames[p.y] = names["out"]  # the projection's readers read y + the branch
        added += [
            helper.make_node("MatMul", [p.x, names["A"]], [names["xa"]], name=f"{pre}/lora_A/MatMul"),
            helper.make_node("Mul", [names["xa"], names["scaling"]], [names["xs"]], name=f"{pre}/lora_Mul"),
            helper.make_node("MatMul", [names["xs"], names["B"]], [names["delta"]], name=f"{pre}/lora_B/MatMul"),
            helper.make_node("Add", [p.y, names["delta"]], [names["out"]], name=f"{pre}/lora_Add"),
        ]
    _rename_uses(graph, renames)  # before the branches join: their Adds keep reading y
    graph.node.extend(added)
    _toposort(graph)
    del m.graph.value_info[:]  # shapes are re-inferred by whoever reads the model
    return m


def _toposort(graph: GraphProto) -> None:
    """Kahn's algorithm, stable: ONNX wants nodes in topological order and the branch nodes were
    appended at the end."""
    prod = {o: k for k, n in enumerate(graph.node) for o in n.output}
    waiting = [sum(1 for i in set(n.input) if i in prod) for n in graph.node]
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(graph.node):
        for src in {prod[i] for i in n.input if i in prod}:
            readers.setdefault(src, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, []):
            waiting[r] -= sum(1 for i in set(graph.node[r].input) if prod.get(i) == k)
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(graph.node):
        raise IncompatibleError("use-case model", "has a cycle after adding the LoRA branches")
    nodes = [graph.node[k] for k in order]
    del graph.node[:]
    graph.node.extend(nodes)
