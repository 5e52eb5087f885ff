"""Reference runtime on ONNX Runtime: one session, adapters switched per run without reloading.

``apply`` loads a section (``ort.LoraAdapter``) once and caches it (LRU with a byte budget);
``run`` passes the active adapter through ``RunOptions.add_active_adapter``, so switching costs a
dictionary lookup, never a new session. ``run(feeds, adapter=..., alpha=...)`` overrides the session
state for one call, which makes concurrent runs with different adapters safe.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from loramgr.errors import UsageError, first_line
from loramgr.formats.quant import dequantize, quantize
from loramgr.runtime import AdapterEntry, Plan, PlanFormatError, PlanLookupError, PlanValueError, qnn
from loramgr.runtime.fastpath import base_twin
from loramgr.runtime.generate import Runner, check_request, greedy
from loramgr.runtime.weights import SharedWeights

if TYPE_CHECKING:
    from loramgr.runtime.fastpath import Twin
    from loramgr.runtime.generate import Generation

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


class GraphOpener(Protocol):
    """What opens a plan's graph as a session other than the plan's own file on the CPU: Qualcomm's
    HTP (``Htp``), or a quantized simulation (:class:`loramgr.quantsim.QuantSim`)."""

    def open(self, plan: Plan, graph: str) -> tuple[Path, Any]: ...


@dataclass(frozen=True)
class Htp:
    """Run on Qualcomm's HTP backend (ONNX Runtime's QNN EP; on x86 its simulator of the SoC):
    ``target``'s compiled graphs with that SoC's numerics, or with ``fp32`` the plan's own graphs in
    the simulator's fp32 mode (no SoC numerics: a check of the graph's logic)."""

    target: str
    fp32: bool = False

    def open(self, plan: Plan, graph: str) -> tuple[Path, Any]:
        """(the graph file, an ONNX Runtime session on HTP) for ``graph`` of ``plan``."""
        soc = int(plan.target(self.target)["soc_model"])
        if self.fp32:
            path = plan.graph_file(graph)
            with qnn.fp32_simulator_graph(path) as model:
                return path, qnn.session(model, None, name=path)
        path = plan.target_graph_file(self.target, graph, shared=qnn.simulator_can_load_shared())
        return path, qnn.session(path, soc)


@contextlib.contextmanager
def _ort_errors(path: Any, doing: str) -> Iterator[None]:
    """ONNX Runtime's own errors (pybind11 exception types) as a plan format error naming the file:
    a hand-edited plan can point a graph at a section file, a section at garbage bytes."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - onnxruntime raises pybind11 types not exported for matching
        first = first_line(e)
        raise PlanFormatError(str(path), f"ONNX Runtime cannot {doing}: {first}") from None


class LoraSession:
    def __init__(
        self,
        plan: Plan | str,
        graph: str | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        session_options: Any = None,
        weights: SharedWeights | None = None,
        fast_default: bool = True,
        htp: GraphOpener | None = None,
    ) -> None:
        """``weights``: one memory-mapped copy of the base's weights shared with the other sessions
        built with it (:mod:`loramgr.runtime.weights`); None: this session loads its own.
        ``fast_default``: with shared ``weights``, runs of the default adapter (or of any entry whose
        alphas are all 0) go to a twin session of the graph without its LoRA branches, over the same
        weights (:mod:`loramgr.runtime.fastpath`); made on the first such run."""
        import onnxruntime as ort

        self.plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        self.graph = graph or next(iter(self.plan.graphs))
        if self.graph not in self.plan.graphs:
            raise PlanLookupError(f"graph {self.graph}", f"is not in the plan (have {', '.join(self.plan.graphs)})")
        self._ort = ort
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3  # LoRA inputs with defaults are expected, not warnings
        if htp is not None:
            weights, fast_default = None, False
            self.graph_file, self.session = htp.open(self.plan, self.graph)
        else:
            self.graph_file = self.plan.graph_file(self.graph)
        self._weights = weights  # the session's initializers point into its mappings: keep them alive
        self._providers = list(providers)
        self._twin_like = session_options  # the twin copies its basic settings
        self._twin: Twin | None = None
        self._twin_tried = not (fast_default and weights is not None)
        if htp is None:
            with _ort_errors(self.graph_file, "load this graph"):
                if weights is not None:
                    session_options = weights.session_options(self.graph, session_options)
                self.session = ort.InferenceSession(
                    str(self.graph_file), sess_options=session_options, providers=list(providers)
                )
        # inputs with a default initializer (LoRA inputs, alpha) are listed as overridable initializers
        self._inputs = {i.name: i for i in [*self.session.get_inputs(), *self.session.get_overridable_initializers()]}
        # a quantized HTP graph keeps its LoRA inputs required (QNN refuses defaults there): ONNX Runtime's
        # Python API then refuses add_active_adapter, so the sections' tensors are fed as inputs
        required = {i.name for i in self.session.get_inputs()}
        self._fed_sections = any(".lora_" in n for n in required)
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.alpha_tensor = self.plan.alpha.get("tensor")
        self._has_alpha = self.alpha_tensor in self.input_names
        self._cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._lock = threading.RLock()
        self.active: AdapterEntry = self.plan.default_adapter
        self.alpha = float(self.plan.alpha.get("default", 1.0))
        self.alphas: list[float] = [self.alpha]  # per slot of the active entry

    # -- adapter state ------------------------------------------------------------------------
    def _loaded(self, entry: AdapterEntry) -> Any:
        return self._load(entry.section_for(self.graph))

    def _group_loaded(self, entry: AdapterEntry) -> list[Any]:
        """A grouped use case's quantization section(s) for this graph (kept loaded while the group
        stays: switching inside a group loads only the weights section)."""
        return [self._load(s) for s in entry.group_sections(self.graph)]

    def _load(self, sec: Any) -> Any:
        key = str(sec.path)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[0]
        path = self.plan.verified(sec)
        ad: Any
        if self._fed_sections:  # the section's tensors, to feed the graph's required LoRA inputs
            with _ort_errors(path, "load this section"):
                params = self._ort.AdapterFormat.read_adapter(str(path)).get_parameters()
                ad = {k: np.array(v.numpy(), copy=True) for k, v in params.items()}
        else:
            ad = self._ort.LoraAdapter()
            with _ort_errors(path, "load this section"):
                ad.Load(str(path))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:  # another thread loaded it meanwhile: share one object
                return hit[0]
            self._cache[key] = (ad, sec.size)
            total = sum(n for _, n in self._cache.values())
            while total > self._cache_bytes and len(self._cache) > 1:
                _, (_, n) = self._cache.popitem(last=False)
                total -= n
        return ad

    def apply(self, name: str) -> None:
        """Make ``name`` the active adapter or use case (loads and verifies its section on first use);
        alphas go back to its defaults."""
        entry = self.plan.entry(name)
        self._group_loaded(entry)
        self._loaded(entry)
        with self._lock:
            self.active = entry
            self.alpha = entry.recommended_alpha
            self.alphas = entry.alphas or [self.alpha]

    def set_alpha(self, alpha: float, adapter: str | None = None) -> None:
        """Every slot of the active entry (``adapter`` None), or the slot of one adapter of the active
        use case."""
        with self._lock:
            if adapter is None:
                self.alpha = float(alpha)
                self.alphas = [float(alpha)] * max(1, len(self.alphas))
                return
            self.alphas[self.active.slot_of(adapter)] = float(alpha)

    def select(self, adapter: str) -> None:
        """Hot switch inside the applied use case: a one-hot alpha vector (the adapter's slot at its
        default alpha, every other slot 0). No section is applied: a dictionary write, not a load."""
        with self._lock:
            if not self.active.is_use_case:
                raise PlanLookupError(f"adapter {adapter}", f"no use case is applied (the active is {self.active.ref})")
            slot = self.active.slot_of(adapter)
            defaults = self.active.alphas
            self.alphas = [defaults[i] if i == slot else 0.0 for i in range(len(defaults))]

    def reset(self) -> None:
        """Back to the base model through the all-zero default adapter."""
        self.apply("default")

    @property
    def cached_sections(self) -> int:
        return len(self._cache)

    # -- execution ----------------------------------------------------------------------------
    def run(
        self,
        feeds: dict[str, Any],
        output_names: Sequence[str] | None = None,
        *,
        adapter: str | None = None,
        alpha: float | None = None,
    ) -> list[np.ndarray]:
        with self._lock:
            entry = self.plan.entry(adapter) if adapter is not None else self.active
            alphas = list(entry.alphas or [entry.recommended_alpha]) if adapter is not None else list(self.alphas)
            if alpha is not None:
                alphas = [float(alpha)] * len(alphas)
        names = list(output_names) if output_names else None
        twin = self._fast(entry, alphas, feeds)
        if twin is not None:  # every branch adds zeros: the graph without them, same weights
            with _ort_errors(self.graph_file, f"run this graph without LoRA branches for {entry.ref}"):
                fast: list[np.ndarray] = twin.session.run(names, {k: feeds[k] for k in feeds if k in twin.inputs})
            return fast
        ro = self._ort.RunOptions()
        # keep a Python reference for the whole run: RunOptions holds only a raw pointer, and an LRU
        # eviction in another thread must not free the adapter mid-run
        adapter_objs = [*self._group_loaded(entry), self._loaded(entry)]
        feeds = dict(feeds)
        for obj in adapter_objs:  # a group's scales, then the use case's codes: disjoint inputs
            if isinstance(obj, dict):
                feeds.update({k: v for k, v in obj.items() if k in self._inputs})
            else:
                ro.add_active_adapter(obj)
        if self._has_alpha and self.alpha_tensor not in feeds:
            feeds[self.alpha_tensor] = self.alpha_value(alphas)
        with _ort_errors(self.graph_file, f"run this graph with {entry.ref}"):
            out: list[np.ndarray] = self.session.run(names, feeds, ro)
        del adapter_objs
        return out

    def _fast(self, entry: AdapterEntry, alphas: Sequence[float], feeds: dict[str, Any]) -> Twin | None:
        """The twin session when this run's branches all add zeros (the default adapter, or every alpha
        0 on a graph with an alpha input) and the caller feeds nothing the twin lacks (but alpha)."""
        if not (entry.is_default or (self._has_alpha and not any(alphas))):
            return None
        twin = self._twin if self._twin_tried else self._make_twin()
        if twin is None or any(k not in twin.inputs and k != self.alpha_tensor for k in feeds):
            return None
        return twin

    def _make_twin(self) -> Twin | None:
        with self._lock:
            if not self._twin_tried and self._weights is not None:
                with _ort_errors(self.graph_file, "load this graph without its LoRA branches"):
                    self._twin = base_twin(self.plan, self.graph, self._weights, self._fresh_options(), self._providers)
                self._twin_tried = True
            return self._twin

    def _fresh_options(self) -> Any:
        """New ``SessionOptions`` with this session's basic settings (options hold the initializers
        added for one graph, so the twin cannot reuse them)."""
        so = self._ort.SessionOptions()
        like = self._twin_like
        for attr in ("log_severity_level", "graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads"):
            setattr(so, attr, getattr(like, attr))
        so.execution_mode = like.execution_mode
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            with contextlib.suppress(Exception):  # an entry never set raises in some ORT versions
                if value := like.get_session_config_entry(key):
                    so.add_session_config_entry(key, value)
        return so

    @property
    def twin(self) -> Twin | None:
        """The LoRA-free twin session, once a run made it (None: not made, or not possible)."""
        return self._twin

    def alpha_value(self, alphas: Sequence[float]) -> np.ndarray:
        """The alpha input for per-slot values: ``[1]`` (one scalar alpha) or ``[1, N]`` (alpha slots,
        unused ones 0)."""
        shape = self._inputs[self.alpha_tensor].shape
        dtype = self._alpha_dtype()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
            if len(shape) == 2 and isinstance(shape[1], int):
                v = np.zeros((1, shape[1]), dtype=dtype)
                v[0, : len(alphas)] = alphas[: shape[1]]
            else:
                v = np.array([alphas[0] if alphas else 1.0], dtype=dtype)
        if not np.isfinite(v).all():
            held = np.dtype(dtype).name
            raise PlanValueError(
                f"alpha {list(alphas)}", f"not every value is a finite {held} (input {self.alpha_tensor!r})"
            )
        return v

    def _alpha_dtype(self) -> Any:
        return np.float16 if "float16" in self._inputs[self.alpha_tensor].type else np.float32

    # -- quantization helpers (per active adapter's I/O encodings) -------------------------------
    def _encoding(self, tensor: str) -> dict[str, Any]:
        enc = self.active.io_encodings(tensor)
        if enc is None:
            raise PlanLookupError(f"adapter {self.active.ref}", f"has no encoding for tensor {tensor!r}")
        return enc

    def quantize(self, tensor: str, x: np.ndarray) -> np.ndarray:
        """Real -> unsigned code with the active adapter's encoding (AIMET: x = scale * (q + offset))."""
        return quantize(x, self._encoding(tensor))

    def dequantize(self, tensor: str, q: np.ndarray) -> np.ndarray:
        """Unsigned code -> real with the active adapter's encoding."""
        return dequantize(q, self._encoding(tensor))


def _lm_graphs(plan: Plan) -> tuple[list[str], list[str]]:
    """(prefill chain, decode chain) graph names of an exported LM plan, parts in plan order."""
    kinds = {n: g.get("kind") for n, g in plan.graphs.items()}
    pre = [n for n, k in kinds.items() if k == "prefill"] or [n for n in plan.graphs if kinds[n] != "decode"]
    return pre, [n for n, k in kinds.items() if k == "decode"]


def lm_limits(plan: Plan) -> tuple[int | None, int]:
    """(vocabulary size or None, tokens the graphs hold) of an exported LM plan, read from the plan's
    recorded graph signatures (no session is created)."""
    pre, dec = _lm_graphs(plan)
    with _plan_shapes(plan):
        first = plan.graphs[pre[0]]["inputs"]
        if "input_ids" not in first:
            raise UsageError(f"plan {plan.root}", "is not an exported LM plan (its first graph has no input_ids)")
        vocab = None
        for g in plan.graphs.values():
            shape = (g.get("outputs") or {}).get("logits", {}).get("shape") or []
            if shape and isinstance(shape[-1], int) and shape[-1] > 0:
                vocab = int(shape[-1])
        room = int(first["input_ids"]["shape"][1])
        for name in dec:
            for n, spec in plan.graphs[name]["inputs"].items():
                if n.startswith("past_key_values.") and isinstance(spec["shape"][2], int):
                    room = int(spec["shape"][2])
                    break
    return vocab, room


@contextlib.contextmanager
def _plan_shapes(plan: Plan) -> Iterator[None]:
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise PlanFormatError(
            str(plan.root), f"graph signatures in the plan are malformed ({type(e).__name__})"
        ) from None


Alpha = float | dict[str, float] | None  # one value for every slot, or per adapter of a use case


def lm_chains(
    plan: Plan | str,
    adapter: str = "default",
    alpha: Alpha = None,
    *,
    share_weights: bool = False,
    htp: GraphOpener | None = None,
) -> tuple[list[Any], list[Any] | None]:
    """Prefill and decode chains of an exported LM plan (graphs by kind, parts in plan order) as
    :class:`loramgr.runtime.generate.Runner` objects running ``adapter`` (or a use case) on one
    LoraSession each; ``alpha`` overrides every slot, or (a mapping) the named adapters' slots.
    ``share_weights``: every session reads one memory-mapped copy of the weights (see
    :mod:`loramgr.runtime.weights` for the trade)."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    pre, dec = _lm_graphs(plan)
    weights = SharedWeights(plan) if share_weights and htp is None else None

    def runner(graph: str) -> Runner:
        s = LoraSession(plan, graph=graph, weights=weights, htp=htp)
        if "input_ids" not in s.input_names and "hidden_states" not in s.input_names:
            raise UsageError(f"graph {graph}", "is not an exported LM graph (no input_ids / hidden_states input)")
        s.apply(adapter)
        if isinstance(alpha, dict):
            for name, value in alpha.items():
                s.set_alpha(value, adapter=name)
        elif alpha is not None:
            s.set_alpha(alpha)
        return Runner.from_session(s.session, lambda feeds: s.run(feeds))

    return [runner(g) for g in pre], ([runner(g) for g in dec] or None)


def generate(
    plan: Plan | str,
    prompt: list[int],
    steps: int,
    adapter: str = "default",
    alpha: Alpha = None,
    *,
    share_weights: bool = False,
    htp: Htp | None = None,
) -> Generation:
    """``loramgr run``: greedy tokens through the plan. The adapter (or use case), the token ids and the
    length are checked against the plan before any session is created."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    entry = plan.entry(adapter)
    for name in alpha if isinstance(alpha, dict) else ():
        entry.slot_of(name)  # every named adapter is in the entry (exit 3 otherwise)
    vocab, room = lm_limits(plan)
    check_request(prompt, steps, vocab=vocab, room=room)
    if htp is not None:
        plan.target(htp.target)  # exit 3 before any session when the plan lacks the target
    pre, dec = lm_chains(plan, adapter, alpha, share_weights=share_weights, htp=htp)
    gen = greedy(pre, dec, prompt, steps, vocab=vocab)
    gen.graphs = {"prefill": len(pre), "decode": len(dec or [])}
    return gen
