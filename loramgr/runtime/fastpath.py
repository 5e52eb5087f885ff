"""The default adapter's fast path: the graph without its LoRA branches, over the same weights.

With the all-zero default adapter every LoRA branch adds zeros: ``x @ A`` and ``(x A) @ B`` still run
at every attachment point (four nodes each), which cost a decode step of a hidden-2048 Llama 3-19%
(depending on thread-pool settings) against the same model exported without LoRA. The graph
file is not changed for this: QNN, the C library and other runtimes read it as exported. Instead
:func:`base_twin` makes, in memory, the graph with its branches removed (the same cut the QNN LoRA v3
creator inputs use, :func:`loramgr.formats.lora_v3.strip_lora`) and opens it as a second session whose
initializers are the *same* memory-mapped weights (:class:`~loramgr.runtime.weights.SharedWeights`):
no second copy of the weights, only the twin's own activations. A session that loads its own weights
(no ``SharedWeights``) has no twin, as that would be a second copy.

The twin is exact, not an approximation: the stripped graph computes the base projections alone, which
is what adding an all-zero branch computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loramgr.errors import IncompatibleError
from loramgr.formats.onnx_graph import SUFFIX_A

if TYPE_CHECKING:
    from loramgr.runtime import Plan
    from loramgr.runtime.weights import SharedWeights


@dataclass(frozen=True)
class Twin:
    """The LoRA-free session and the input names it takes (the graph's, minus LoRA inputs and alpha)."""

    session: Any
    inputs: frozenset[str]


def stripped_model(path: str) -> Any | None:
    """The graph at ``path`` (external data not loaded) with every LoRA branch removed, or None when
    it has none or a branch is not of the shape loramgr exports (the caller keeps the full graph)."""
    import onnx

    from loramgr.formats.lora_v3 import strip_lora

    model = onnx.load(path, load_external_data=False)
    points = [(i.name[: -len(SUFFIX_A)], i.name) for i in model.graph.input if i.name.endswith(SUFFIX_A)]
    if not points:
        return None
    outputs = [o.name for o in model.graph.output]
    try:
        strip_lora(model, points, path)
    except IncompatibleError:
        return None
    if [o.name for o in model.graph.output] != outputs:
        return None
    return model


def base_twin(plan: Plan, graph: str, weights: SharedWeights, options: Any, providers: list[str]) -> Twin | None:
    """A session of ``graph`` without its LoRA branches, every external initializer taken from
    ``weights`` (None when the graph cannot be stripped). ``options``: fresh ``SessionOptions``."""
    import onnxruntime as ort

    path = plan.graph_file(graph)
    model = stripped_model(str(path))
    if model is None:
        return None
    options = weights.session_options(graph, options, model)
    # initializers not viewable in place (rare: unaligned) are still read by ONNX Runtime, from the
    # graph's directory, as the model comes from memory
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)
    return Twin(session, frozenset(i.name for i in session.get_inputs()))


__all__ = ["Twin", "base_twin", "stripped_model"]
