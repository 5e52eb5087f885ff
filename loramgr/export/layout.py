"""Where a loaded causal LM keeps what the export needs: its decoder layers, final norm, cache
argument and attachment points, and the refusals (exit 2) for models the export cannot take.

Two families of layout: GPT-2 (``transformer.h``, ``Conv1D`` projections; the re-stated loop in
``model.py``) and every other decoder-only model (its layer list found from the model: ``model.layers``,
``transformer.h``, ...; ``nn.Linear`` projections; the generic path in ``generic.py``, through the
model's own forward).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from loramgr.errors import UsageError
from loramgr.export.rewrites import is_fused_experts, longrope_switch

GPT2_TYPES = ("gpt2",)
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")


def family_of(config: Any) -> str:
    """``gpt2`` (the re-stated loop) or ``generic`` (the model's own forward)."""
    return "gpt2" if getattr(config, "model_type", None) in GPT2_TYPES else "generic"


@dataclass
class LoraTarget:
    module_path: str
    in_features: int
    out_features: int


MASK_FUNCTIONS = ("create_causal_mask", "create_sliding_window_causal_mask", "create_chunked_causal_mask")
REFUSED_MASKS = ("create_bidirectional_mask", "create_masks_for_generate")


@dataclass(frozen=True)
class Decoder:
    """Where the generic path finds things in a loaded causal LM."""

    layers: nn.ModuleList
    norm: nn.Module | None  # the module right after the last layer (its input is the last layer's output)
    cache_kwarg: str  # "cache" (transformers 5) or "past_key_values"
    modeling: Any  # the model's modeling module, whose mask functions are swapped during the trace
    kv_heads: int
    head_dim: int


def _reason(model: Any) -> str | None:
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "is an encoder-decoder model; `base export` takes decoder-only causal LMs"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "uses bidirectional attention; `base export` takes causal LMs"
    return None


def _layer_stack(model: Any, n: int) -> tuple[str, nn.ModuleList] | None:
    """The decoder's layer list, found from the model rather than from a list of attribute names: the
    ``nn.ModuleList`` of ``n`` (``num_hidden_layers``) modules of one class holding the most weights
    (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ...)."""
    found = [
        (sum(p.numel() for p in m.parameters()), path, m)
        for path, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and len({type(x) for x in m}) == 1
    ]
    if not found:
        return None
    _, path, layers = max(found, key=lambda f: f[0])
    return path, layers


FINAL_NORMS = ("norm", "final_layer_norm", "final_layernorm", "ln_f", "norm_f")


def _final_norm(dec: nn.Module, layers: nn.ModuleList) -> nn.Module | None:
    """The module right after the layers: the first normalisation registered after them in the
    decoder (``norm``, ``ln_f``, ``final_layernorm``...; BLOOM's embedding norm comes before), else one
    of the usual final-norm names registered anywhere (OPT declares ``final_layer_norm`` first). None:
    the model exports as one part (the norm only marks where a part ends)."""
    after = False
    for name, child in dec.named_children():
        if child is layers:
            after = True
        elif after and ("norm" in type(child).__name__.lower() or "norm" in name.lower() or name == "ln_f"):
            return child
    named = dict(dec.named_children())
    return next((named[n] for n in FINAL_NORMS if isinstance(named.get(n), nn.Module)), None)


def decoder_of(model: Any) -> Decoder:
    """Locate the decoder layers, final norm and cache argument, or refuse (exit 2) naming why."""
    mt = getattr(model.config, "model_type", "?")
    why = _reason(model)
    if why:
        raise UsageError(f"model_type {mt!r}", why)
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None)
    stack = _layer_stack(model, int(n)) if isinstance(n, int) and n > 0 else None
    if stack is None:
        raise UsageError(
            f"model_type {mt!r}",
            "has no num_hidden_layers in its config (a multimodal wrapper? export its text model's directory)"
            if not isinstance(n, int)
            else f"has no list of its {n} decoder layers (num_hidden_layers) of one kind (a hybrid of attention "
            "and state-space layers?); `base export` takes decoder-only causal LMs",
        )
    path, layers = stack
    modules = dict(model.named_modules())
    dec = modules[path.rsplit(".", 1)[0]] if "." in path else model
    norm = _final_norm(dec, layers)
    params = inspect.signature(type(dec).forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else ""
    if not cache_kwarg:
        raise UsageError(f"model_type {mt!r}", f"its decoder {type(dec).__name__} takes no KV cache argument")
    modeling = sys.modules[type(dec).__module__]
    if not any(hasattr(modeling, f) for f in MASK_FUNCTIONS):
        raise UsageError(f"model_type {mt!r}", "builds its attention mask without transformers' mask functions")
    # the nominal shape (the probe reads what each layer really caches): configs with per-layer values
    # (Gemma 4) raise on the global attribute, so each read falls back
    heads = _config_int(cfg, "num_attention_heads", 1)
    kvh = _config_int(cfg, "num_key_value_heads", heads)
    hd = _config_int(cfg, "head_dim", _config_int(cfg, "hidden_size", heads) // max(heads, 1))
    return Decoder(layers, norm, cache_kwarg, modeling, kvh, hd)


def _config_int(cfg: Any, name: str, default: int) -> int:
    try:
        v = getattr(cfg, name, None)
    except Exception:  # noqa: BLE001 - transformers' per-layer attribute errors are not AttributeError
        return default
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


@dataclass(frozen=True)
class Layout:
    """Where a loaded causal LM keeps what the export needs."""

    family: str
    layers: nn.ModuleList
    layers_path: str  # "model.layers", "transformer.h"
    kv_heads: int
    head_dim: int
    embeddings: tuple[nn.Module, ...]  # what the first part holds besides layers
    head: tuple[nn.Module, ...]  # what the last part holds besides layers
    decoder: Decoder | None = None  # the generic path's view of the model (None: GPT-2's re-stated loop)
    #: layer -> ((key heads, key dim), (value heads, value dim)) for the layers that keep a KV cache of
    #: their own; read off the model by a probe forward (generic.cache_layout), every layer for GPT-2
    cache: dict[int, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    #: longrope's switch point (``original_max_position_embeddings``): the graphs take ``rope_long``
    rope_switch: int | None = None


def layout_of(model: Any) -> Layout:
    """The model's layout, or a refusal (exit 2) naming why the export cannot take it."""
    family = family_of(model.config)
    if family == "gpt2":
        t, c = model.transformer, model.config
        hd = c.hidden_size // c.num_attention_heads
        kv = (c.num_attention_heads, hd)
        cache = {i: (kv, kv) for i in range(len(t.h))}
        return Layout(
            family,
            t.h,
            "transformer.h",
            c.num_attention_heads,
            hd,
            (t.wte, t.wpe),
            (t.ln_f, model.lm_head),
            None,
            cache,
        )
    dec = decoder_of(model)
    path = next(p for p, m in model.named_modules() if m is dec.layers)
    emb = model.get_input_embeddings()
    switch = longrope_switch(model)
    return Layout(
        family,
        dec.layers,
        path,
        dec.kv_heads,
        dec.head_dim,
        (emb,),
        tuple(m for m in (dec.norm, model.get_output_embeddings()) if isinstance(m, nn.Module)),
        dec,
        {},
        switch,
    )


def _features(mod: nn.Module, family: str) -> tuple[int, int]:
    if family != "gpt2" and isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    if is_fused_experts(mod):
        raise TypeError(
            f"is a {type(mod).__name__} (every expert's weights fused in 3D tensors), not an nn.Linear; "
            "LoRA on routed experts is not exported: attach it to attention or to shared/dense MLP projections"
        )
    w = getattr(mod, "weight", None)  # transformers' Conv1D stores [in, out]
    if family == "gpt2" and w is not None and w.dim() == 2 and type(mod).__name__ == "Conv1D":
        return int(w.shape[0]), int(w.shape[1])
    raise TypeError(f"is a {type(mod).__name__}, not {'a Conv1D' if family == 'gpt2' else 'an nn.Linear'}")


def _matches(path: str, wanted: list[str]) -> bool:
    return any(path == w or path.endswith("." + w) for w in wanted)


def find_targets(model: nn.Module, lay: Layout, wanted: list[str], layers: tuple[int, int]) -> list[LoraTarget]:
    """Projection modules of ``layers`` whose leaf name (or path suffix) is in ``wanted``."""
    out = []
    prefixes = tuple(f"{lay.layers_path}.{i}." for i in range(*layers))
    for path, mod in model.named_modules():
        if path.startswith(prefixes) and _matches(path, wanted):
            out.append(LoraTarget(path, *_features(mod, lay.family)))
    return out


def check_targets(model: nn.Module, lay: Layout, wanted: list[str]) -> None:
    """Every wanted name matches a projection of the decoder layers, and each match can take LoRA
    (``nn.Linear``; ``Conv1D`` for GPT-2). Refusals (exit 2) name the module and what is there."""
    if not wanted:  # refused before a weight is read: an export without attachment points has no LoRA
        raise UsageError(
            "--target-modules", "names no module; give the projections to attach LoRA to, e.g. q_proj,v_proj"
        )
    inside = [(p, m) for p, m in model.named_modules() if p.startswith(lay.layers_path + ".")]
    for path, mod in inside:
        if _matches(path, wanted):
            try:
                _features(mod, lay.family)
            except TypeError as e:
                raise UsageError(f"--target-modules: {path}", f"{e}; LoRA attaches to linear projections") from None
    if lay.family == "gpt2":
        choices = list(GPT2_TARGETS)
    else:
        first = f"{lay.layers_path}.0."
        choices = sorted({p.rsplit(".", 1)[-1] for p, m in inside if p.startswith(first) and isinstance(m, nn.Linear)})
    bad = [w for w in wanted if not any(_matches(p, [w]) for p, _ in inside)]
    if lay.family == "gpt2":
        bad += [w for w in wanted if w not in bad and w.rsplit(".", 1)[-1] not in GPT2_TARGETS]
    if bad:
        raise UsageError(
            f"--target-modules {','.join(bad)}",
            f"matches no projection of the decoder layers; these do: {', '.join(choices)}",
        )
