"""The generic export path: the model's own ``forward``, with LoRA inputs, an explicit KV cache and
loramgr's masks, for any decoder-only causal LM whose attachment points are ``nn.Linear``.

Nothing of the architecture is re-stated here. Each family's embedding scale, q/k norms, fused
projections, rotary variants, soft-capping, residual multipliers and sliding-window layer pattern
stay in transformers' code; this module only changes what crosses the graph boundary:

- **LoRA**: a forward hook on every targeted ``nn.Linear`` adds ``lora_alpha * (x @ A) @ B`` with
  ``A [in, R]`` and ``B [R, out]`` read from graph inputs named ``<module>.lora_A.weight`` /
  ``.lora_B.weight`` (module paths as PEFT sees them; hooks leave the names and weights untouched).
  With alpha slots, ``((x @ A) * alpha[indices]) @ B``.
- **KV cache**: a cache object handed to the model as its ``cache`` (``past_key_values`` before
  transformers 5.x) holds ``past_key_values.<l>.key|value [1, kv, P, d]`` from graph inputs; its
  ``update`` returns past + new and records the new entries as ``present.<l>.key|value``.
- **Masks**: the model's module-level ``create_causal_mask`` / ``create_sliding_window_causal_mask``
  are replaced, for the trace only, by functions that turn the graph's ``attention_mask [1, P + q]``
  into the additive 4D mask the eager attention adds. The model's own code still decides which
  layer gets which mask. Past entries count where the mask is 1, new entries causally; sliding-window
  layers also drop keys ``window`` or more positions behind the query, and chunked layers (Llama 4)
  keys outside the query's chunk of ``attention_chunk_size`` positions, where past slot ``j`` holds
  position ``j`` (loramgr's runtime fills the cache that way). Other mask patterns (bidirectional,
  packed) are refused.
- **Parts**: layers outside the part are skipped; a pre-hook on the part's first layer (or the final
  norm) substitutes the ``hidden_states`` input, and the input of the module after the part's last
  layer is its ``hidden_states_out``. Work outside the part is dead code the exporter removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loramgr.errors import UsageError
from loramgr.export.layout import MASK_FUNCTIONS, REFUSED_MASKS, Layout
from loramgr.export.model import GraphModule, GraphSpec, alpha_of, lora_branch, lora_inputs_of, mask_bias
from loramgr.export.rewrites import rewritten


class GraphCache:
    """A KV cache over graph inputs: ``update`` returns past + new and keeps the new entries."""

    is_compileable = False

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]], past_len: int) -> None:
        self.past, self.past_len = past, past_len
        self.presents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.presents[layer_idx] = (key_states, value_states)
        if layer_idx not in self.past:
            return key_states, value_states
        pk, pv = self.past[layer_idx]
        return torch.cat([pk, key_states], dim=2), torch.cat([pv, value_states], dim=2)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.past_len

    def __getattr__(self, name: str) -> Any:
        """Anything else a model asks of its cache (recurrent or convolution state, a sparse-attention
        indexer, per-layer cache objects) is state the graphs do not carry: a refusal naming it."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise UsageError(
            f"the model's cache.{name}",
            "it keeps state besides keys and values (recurrent, convolution or indexer state); "
            "`base export` carries a key/value cache only",
        )


class _Skip(nn.Module):
    """Stands in for a decoder layer outside the part: passes ``hidden_states`` through and answers
    attribute reads (``attention_type``, ...) from the layer it replaces."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: its weights stay out of the graph

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class GenericForward(GraphModule):
    """One exportable graph (a part of prefill or decode) through the model's own forward."""

    def __init__(self, model: Any, lay: Layout, spec: GraphSpec) -> None:
        super().__init__(model, lay, spec)
        if lay.decoder is None:
            raise ValueError("the generic path needs the decoder its layout found (layout_of)")
        self.dec = lay.decoder
        self._lora: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._alpha: torch.Tensor | None = None
        self._state: dict[str, Any] = {}

    # -- per-trace installation --------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Hooks, skipped layers and mask functions, for the duration of one export."""
        s, dec = self.spec, self.dec
        n = len(dec.layers)
        handles: list[Any] = []
        saved: dict[int, nn.Module] = {}
        patched: dict[str, Any] = {}
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(rewritten(self.model, self._long_rope, dec.modeling))
            modules = dict(self.model.named_modules())
            for path in self.targets:
                handles.append(modules[path].register_forward_hook(self._lora_hook(path)))
            for i in range(n):
                if not s.layers[0] <= i < s.layers[1]:
                    saved[i] = dec.layers[i]
                    dec.layers[i] = _Skip(saved[i])
            start = dec.layers[s.layers[0]] if s.layers[0] < n else dec.norm
            end = dec.layers[s.layers[1]] if s.layers[1] < n else dec.norm
            if (start is None and not s.first) or (end is None and not s.last):
                raise UsageError(
                    f"model_type {getattr(self.model.config, 'model_type', '?')!r}",
                    "has no final norm after its decoder layers to end a part at; export it as one part",
                )
            if not s.first and start is not None:
                handles.append(start.register_forward_pre_hook(self._substitute, with_kwargs=True))
            if not s.last and end is not None:
                handles.append(end.register_forward_pre_hook(self._capture, with_kwargs=True))
            for f in MASK_FUNCTIONS + REFUSED_MASKS:
                if hasattr(dec.modeling, f):
                    patched[f] = getattr(dec.modeling, f)
                    setattr(dec.modeling, f, self._mask_function(f))
            yield
        finally:
            for h in handles:
                h.remove()
            for i, layer in saved.items():
                dec.layers[i] = layer
            for f, fn in patched.items():
                setattr(dec.modeling, f, fn)
            stack.close()

    def _lora_hook(self, path: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            a, b, idx = self._lora[path]
            return lora_branch(args[0], out, a, b, idx, self._alpha)

        return hook

    def _substitute(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        h = self._state["hidden_states"]
        if args:
            return (h, *args[1:]), kwargs
        return args, kwargs | {"hidden_states": h}

    def _capture(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._state["out"] = args[0] if args else kwargs["hidden_states"]

    def _long_rope(self, position_ids: torch.Tensor, switch: int) -> torch.Tensor:
        """Longrope's choice: HF's ``max(position_ids) + 1 > switch`` over this call's real tokens
        (padding has mask 0), or the ``rope_long`` input set (a cache being recomputed with the long
        factors, as HF's generate does once the sequence passes the switch)."""
        current = self._state["mask"][:, self.spec.past_len :]
        if current.shape == position_ids.shape:
            position_ids = position_ids * current.to(position_ids.dtype)
        long = (position_ids.max() + 1) > switch
        flag = self._state.get("rope_long")
        return long if flag is None else long | (flag.reshape(()) > 0)

    def _mask_function(self, name: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> torch.Tensor:
            if name in REFUSED_MASKS or kwargs.get("or_mask_function") or kwargs.get("and_mask_function"):
                raise UsageError(
                    f"model_type {getattr(self.model.config, 'model_type', '?')!r}",
                    f"builds its attention with {name} or a custom mask pattern; "
                    "the generic export path takes causal and sliding-window attention",
                )
            cfg = kwargs.get("config", args[0] if args else self.model.config)
            window = getattr(cfg, "sliding_window", None) if name == "create_sliding_window_causal_mask" else None
            chunk = getattr(cfg, "attention_chunk_size", None) if name == "create_chunked_causal_mask" else None
            return mask_bias(self._state["mask"], self._state["position_ids"], self.spec.past_len, window, chunk)

        return make

    # -- the forward --------------------------------------------------------------------------------
    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, cache = self._run(dict(zip(self.input_names, args, strict=True)))
        return (h, *[t for i in self.cached for t in cache.presents[i]])

    def _run(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, GraphCache]:
        s = self.spec
        dtype = next(self.model.parameters()).dtype
        self._lora = lora_inputs_of(d, self.targets)
        self._alpha = alpha_of(d, s, dtype)
        past = {}
        if s.past_len:
            past = {i: (d[f"past_key_values.{i}.key"], d[f"past_key_values.{i}.value"]) for i in self.cached}
        cache = GraphCache(past, s.past_len)
        ids = d["input_ids"] if s.first else torch.zeros(1, s.q_len, dtype=torch.int64)
        self._state = {
            "hidden_states": d.get("hidden_states"),
            "mask": d["attention_mask"],
            "position_ids": d["position_ids"],
            "rope_long": d.get("rope_long"),
        }
        kw = {self.dec.cache_kwarg: cache, "use_cache": True}
        out = self.model(input_ids=ids, attention_mask=d["attention_mask"], position_ids=d["position_ids"], **kw)
        return (out.logits if s.last else self._state["out"]), cache


@dataclass(frozen=True)
class Probe:
    """What one eager forward of two tokens shows about a model (``probe``)."""

    #: layer -> ((key heads, key dim), (value heads, value dim)) for the layers that call ``update``
    cache: dict[int, tuple[tuple[int, int], tuple[int, int]]]
    #: the shape a layer hands the next one; parts can be cut only where it is ``[1, tokens, hidden]``
    carried: tuple[int, ...]


def _run_eager(
    model: Any, lay: Layout, spec: GraphSpec, feeds: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, GraphCache]:
    fwd = GenericForward(model, lay, spec)
    with torch.no_grad(), fwd.installed():
        return fwd._run(feeds)


def check_decode(model: Any, lay: Layout) -> None:
    """Refuse (exit 2) a model whose decode through the graphs' KV cache does not reproduce its own
    full forward: three tokens at once against two of prefill and one of decode. A model that keeps
    state outside the attention cache (recurrent or state-space layers) would otherwise export decode
    graphs that run and are wrong. ``lay.cache`` must hold the probe's layout."""
    n = len(lay.layers)
    vocab = int(getattr(model.config, "vocab_size", 3) or 3)
    ids = (torch.arange(1, 4) % vocab)[None]

    def feeds(x: torch.Tensor, past: int, pos: list[int]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": x,
            "attention_mask": torch.ones(1, past + x.shape[1], dtype=torch.int64),
            "position_ids": torch.tensor([pos]),
        }

    full, _ = _run_eager(model, lay, GraphSpec("check-full", 3, 0, (0, n), True, True), feeds(ids, 0, [0, 1, 2]))
    # the prefill whose cache the decode step reads
    _, cache = _run_eager(
        model, lay, GraphSpec("check-prefill", 2, 0, (0, n), True, True), feeds(ids[:, :2], 0, [0, 1])
    )
    past = {
        f"past_key_values.{i}.{kv}": t for i, (k, v) in cache.presents.items() for kv, t in (("key", k), ("value", v))
    }
    # other tokens in between: a model that keeps state in its modules (not in the cache it is handed)
    # now holds theirs, as a graph would hold none
    other = (torch.arange(5, 7) % vocab)[None]
    _run_eager(model, lay, GraphSpec("check-other", 2, 0, (0, n), True, True), feeds(other, 0, [0, 1]))
    step, _ = _run_eager(
        model, lay, GraphSpec("check-decode", 1, 2, (0, n), True, True), feeds(ids[:, 2:], 2, [2]) | past
    )
    want, got = full[0, -1].float(), step[0, -1].float()
    diff = float((want - got).abs().max())
    if not diff <= 1e-3 * float(want.abs().max()) + 1e-4:
        raise UsageError(
            f"model_type {getattr(model.config, 'model_type', '?')!r}",
            f"its decode through the KV cache does not reproduce its full forward (logits differ by {diff:.3g}): "
            "it keeps state outside the attention cache (recurrent or state-space layers?); export prefill graphs only",
        )


def probe(model: Any, lay: Layout) -> Probe:
    """Run the model as the graphs will (hooks, masks, stand-ins) on two tokens and read off what its
    cache receives: what the model caches is what the graphs carry (DeepSeek's MLA caches K and V of
    different widths; Gemma 3n's KV-shared layers call no ``update`` and keep nothing). On the meta
    device (no weights read) it still runs every refusal the trace would hit."""
    mt = getattr(model.config, "model_type", "?")
    n = len(lay.layers)
    fwd = GenericForward(model, lay, GraphSpec("probe", 2, 0, (0, n), True, True))
    device = next(model.parameters()).device
    carried: list[tuple[int, ...]] = []

    def seen(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        h = args[0] if args else kwargs.get("hidden_states")
        carried.append(tuple(h.shape) if isinstance(h, torch.Tensor) else ())

    hook = lay.layers[0].register_forward_pre_hook(seen, with_kwargs=True)
    try:
        with torch.no_grad(), torch.device(device), fwd.installed():
            ids = torch.zeros(1, 2, dtype=torch.int64)
            _, cache = fwd._run(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(2)[None]}
            )
    finally:
        hook.remove()
    layout = {}
    for i, (k, v) in sorted(cache.presents.items()):
        if k.dim() != 4 or v.dim() != 4 or k.shape[2] != 2 or v.shape[2] != 2:
            raise UsageError(
                f"model_type {mt!r}",
                f"layer {i} caches keys {tuple(k.shape)} and values {tuple(v.shape)}, not [batch, heads, tokens, dim]",
            )
        layout[i] = ((int(k.shape[1]), int(k.shape[3])), (int(v.shape[1]), int(v.shape[3])))
    if not layout:
        raise UsageError(f"model_type {mt!r}", "its layers keep no KV cache")
    return Probe(layout, carried[0] if carried else ())


def with_cache(model: Any, lay: Layout) -> Layout:
    """``lay`` with the cache layout ``probe`` reads off the model (the generic path; GPT-2's layout
    already holds it)."""
    return dataclasses.replace(lay, cache=probe(model, lay).cache) if lay.decoder is not None else lay
