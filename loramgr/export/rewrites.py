"""Per-trace stand-ins for the few modules whose eager code cannot be exported as it is, each computing
the same values from the same weights.

- **RoPE that changes with the sequence** (``longrope``, ``dynamic``): transformers' decorator picks
  the frequencies in Python (``if``) and writes them into a buffer, which ``torch.export`` cannot
  keep. Here the choice is a tensor ``Where`` on the same condition HF tests: longrope uses the long
  factors when the last real position + 1 exceeds ``original_max_position_embeddings``, per call, as
  in HF's forward. Dynamic NTK only grows past ``max_position_embeddings``, which no exported graph
  reaches (``--context-len`` is capped there), so its frequencies are the initial ones.
- **Fused MoE experts** (transformers 5's ``@use_experts_implementation`` classes: Mixtral, Qwen2/3
  MoE, OLMoE, Granite MoE, GPT-OSS, DeepSeek-V3, ...): the eager loop is data-dependent and the
  grouped kernel has no ONNX function. Here every expert runs on every token and its output is
  weighted by the router's top-k weight (0 for experts not picked), so the sum is HF's: the router
  (top-k, normalisation, biases, shared experts) stays HF's own code. Static shapes and plain MatMuls,
  at ``num_experts / top_k`` times the expert FLOPs of a sparse kernel (docs/export.md).
- **Complex RoPE** (Llama 4, DeepSeek-V2): ``torch.polar`` / ``view_as_complex`` / ``view_as_real``
  return and take real/imaginary pairs during the trace (``Pair``); the products are the same.
- **ErfInv** (Gemma 3n's activation-sparsity cut-off): an ONNX function for the one op transformers
  uses that the exporter has none for (``translations``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

DYNAMIC_ROPE = ("longrope", "dynamic")


class _With:
    """``mod`` with some attributes replaced, for calling its undecorated forward."""

    def __init__(self, mod: nn.Module, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_mod", mod)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        return values[name] if name in values else getattr(object.__getattribute__(self, "_mod"), name)


def _rope_types(mod: nn.Module) -> list[str]:
    rt = getattr(mod, "rope_type", None)
    return (
        [rt] if isinstance(rt, str) else [v for v in rt.values() if isinstance(v, str)] if isinstance(rt, dict) else []
    )


def is_dynamic_rope(mod: nn.Module) -> bool:
    """A rotary module whose forward transformers wraps in ``dynamic_rope_update`` with a type that
    changes its frequencies in Python."""
    wrapped = getattr(type(mod).forward, "__wrapped__", None)
    return wrapped is not None and any(t == "longrope" or "dynamic" in t for t in _rope_types(mod))


def longrope_switch(model: nn.Module) -> int | None:
    """``original_max_position_embeddings`` of a longrope model: where HF switches to the long factors
    (and, in ``generate``, recomputes the cache once); None for every other RoPE."""
    for mod in model.modules():
        if is_dynamic_rope(mod) and "longrope" in _rope_types(mod):
            params = getattr(mod, "config").rope_parameters  # noqa: B009 - an HF rotary module's config
            if "original_max_position_embeddings" not in params:  # per layer type
                params = next(p for p in params.values() if isinstance(p, dict) and p.get("rope_type") == "longrope")
            return int(params["original_max_position_embeddings"])
    return None


def rope_forward(mod: Any, long: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., Any]:
    """The rotary module's forward with the frequency choice as a tensor op; ``long(position_ids,
    switch)`` is HF's ``max(position_ids) + 1 > switch`` over the call's real tokens, or the graph's
    ``rope_long`` input (a runtime recomputing its cache after the switch, as HF's generate does)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    undecorated = type(mod).forward.__wrapped__

    def forward(x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None) -> Any:
        rt = mod.rope_type if layer_type is None else mod.rope_type[layer_type]
        prefix = "" if layer_type is None else f"{layer_type}_"
        kw = {} if layer_type is None else {"layer_type": layer_type}
        inv = getattr(mod, f"{prefix}inv_freq")
        if rt == "longrope":
            params = mod.config.rope_parameters if layer_type is None else mod.config.rope_parameters[layer_type]
            omax = int(params["original_max_position_embeddings"])
            long_inv, _ = ROPE_INIT_FUNCTIONS[rt](mod.config, x.device, seq_len=omax + 1, **kw)
            short = getattr(mod, f"{prefix}original_inv_freq")
            inv = torch.where(long(position_ids, omax), long_inv.to(short.dtype), short)
        return undecorated(_With(mod, {f"{prefix}inv_freq": inv}), x, position_ids, **kw)

    return forward


def is_fused_experts(mod: nn.Module) -> bool:
    """An experts module of transformers' ``@use_experts_implementation`` (3D expert weights)."""
    return hasattr(mod, "has_gate") and hasattr(mod, "_is_expert_parallel") and hasattr(mod, "down_proj")


def dense_experts(mod: Any) -> Callable[..., torch.Tensor]:
    """Every expert on every token, weighted by the router's top-k weights scattered over the experts."""

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        up = mod.gate_up_proj if mod.has_gate else mod.up_proj
        n = up.shape[0]
        x = hidden_states.unsqueeze(0)  # [1, T, H], broadcast over the experts
        h = torch.matmul(x, up if mod.is_transposed else up.transpose(1, 2))  # [E, T, 2I or I]
        if mod.has_bias:
            h = h + (mod.gate_up_proj_bias if mod.has_gate else mod.up_proj_bias).unsqueeze(1)
        h = mod._apply_gate(h) if mod.has_gate else mod.act_fn(h)
        down = mod.down_proj
        h = torch.matmul(h, down if mod.is_transposed else down.transpose(1, 2))  # [E, T, H]
        if mod.has_bias:
            h = h + mod.down_proj_bias.unsqueeze(1)
        if mod.has_post_expert_norm:
            h = mod.post_expert_norm(h)
        picked = top_k_index.unsqueeze(-1) == torch.arange(n, dtype=top_k_index.dtype)  # [T, k, E]
        weights = (picked.to(top_k_weights.dtype) * top_k_weights.unsqueeze(-1)).sum(dim=1)  # [T, E]
        out = (h * weights.transpose(0, 1).unsqueeze(-1).to(h.dtype)).sum(dim=0)
        return out.to(hidden_states.dtype)

    return forward


class Pair:
    """A complex tensor as its real and imaginary parts: what ``torch.polar`` / ``view_as_complex``
    return during a trace of a model whose RoPE is complex (Llama 4, DeepSeek-V2). ONNX has no complex
    type; the rotation ``(a + bi)(c + di)`` is the same four products either way."""

    def __init__(self, re: torch.Tensor, im: torch.Tensor) -> None:
        self.re, self.im = re, im

    def __mul__(self, other: Any) -> Pair:
        if isinstance(other, Pair):
            return Pair(self.re * other.re - self.im * other.im, self.re * other.im + self.im * other.re)
        return Pair(self.re * other, self.im * other)

    __rmul__ = __mul__

    def __getitem__(self, index: Any) -> Pair:
        return Pair(self.re[index], self.im[index])

    def unsqueeze(self, dim: int) -> Pair:
        return Pair(self.re.unsqueeze(dim), self.im.unsqueeze(dim))

    def to(self, *args: Any, **kwargs: Any) -> Pair:
        return self  # a device move: everything is on the CPU here

    @property
    def shape(self) -> torch.Size:
        return self.re.shape

    @property
    def device(self) -> torch.device:
        return self.re.device


def _polar(abs: torch.Tensor, angle: torch.Tensor) -> Pair:
    return Pair(abs * torch.cos(angle), abs * torch.sin(angle))


def _view_as_complex(t: torch.Tensor) -> Pair:
    return Pair(t[..., 0], t[..., 1])


def _view_as_real(p: Any) -> torch.Tensor:
    return torch.stack([p.re, p.im], dim=-1) if isinstance(p, Pair) else _REAL(p)


_REAL = torch.view_as_real
COMPLEX_FUNCTIONS = {"polar": _polar, "view_as_complex": _view_as_complex, "view_as_real": _view_as_real}


def uses_complex(modeling: Any) -> bool:
    """Whether a modeling module computes with complex tensors (its source names the functions)."""
    try:
        src = inspect.getsource(modeling)
    except (OSError, TypeError):
        return False
    return "view_as_complex" in src or "torch.polar" in src


def _dense_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    return dense_experts(self)(hidden_states, top_k_index, top_k_weights)


@contextlib.contextmanager
def rewritten(
    model: nn.Module, long: Callable[[torch.Tensor, int], torch.Tensor], modeling: Any = None
) -> Iterator[None]:
    """The stand-ins installed on ``model``'s modules for the duration of one trace; with a modeling
    module that computes RoPE in complex numbers, ``torch``'s complex constructors too (one trace at a
    time: the export is single-threaded)."""
    done: list[nn.Module] = []
    classes: dict[type, Any] = {}  # the decorated experts classes, their own forward
    saved = {n: getattr(torch, n) for n in COMPLEX_FUNCTIONS} if modeling is not None and uses_complex(modeling) else {}
    try:
        for n in saved:
            setattr(torch, n, COMPLEX_FUNCTIONS[n])
        for mod in model.modules():
            if is_dynamic_rope(mod):
                mod.forward = rope_forward(mod, long)
                done.append(mod)
            elif is_fused_experts(mod):
                # the class transformers' decorator wrapped (a subclass may route around it: Ergo's
                # per-route norm calls super().forward), replaced at class level for the trace
                owner = next(
                    (c for c in type(mod).__mro__ if hasattr(c.__dict__.get("forward"), "__wrapped__")), type(mod)
                )
                classes.setdefault(owner, owner.__dict__.get("forward"))
                setattr(owner, "forward", _dense_forward)  # noqa: B010 - a class attribute, for the trace
        yield
    finally:
        for mod in done:
            del mod.forward
        for owner, fn in classes.items():
            if fn is None:  # it had none of its own: the inherited one comes back
                delattr(owner, "forward")
            else:
                setattr(owner, "forward", fn)  # noqa: B010
        for n, fn in saved.items():
            setattr(torch, n, fn)


# Giles (2010), "Approximating the erfinv function", single precision: two polynomials in
# w = -log((1 - x)(1 + x)), as torch's own CPU kernel uses for float32 (relative error ~1e-7).
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)  # fmt: skip
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)  # fmt: skip


def _erfinv(x: Any) -> Any:
    """ONNX has no ErfInv: transformers uses it for constants (Gemma 3n's activation sparsity cut-off,
    ``Normal(0, 1).icdf``), which the exporter then folds."""
    import onnxscript

    op: Any = onnxscript.opset18  # its per-op type variables do not follow a value of unknown type

    def poly(coeffs: tuple[float, ...], w: Any) -> Any:
        p = op.CastLike(op.Constant(value_float=coeffs[0]), x)
        for c in coeffs[1:]:
            p = op.Add(op.CastLike(op.Constant(value_float=c), x), op.Mul(p, w))
        return p

    one = op.CastLike(op.Constant(value_float=1.0), x)
    w = op.Neg(op.Log(op.Mul(op.Sub(one, x), op.Add(one, x))))
    central = poly(_ERFINV_CENTRAL, op.Sub(w, op.CastLike(op.Constant(value_float=2.5), x)))
    tail = poly(_ERFINV_TAIL, op.Sub(op.Sqrt(w), op.CastLike(op.Constant(value_float=3.0), x)))
    small = op.Less(w, op.CastLike(op.Constant(value_float=5.0), x))
    return op.Mul(op.Where(small, central, tail), x)


def translations() -> dict[Any, Any]:
    """ONNX functions for the torch ops transformers uses that the exporter has none for."""
    return {torch.ops.aten.erfinv.default: _erfinv, torch.ops.prims.erf_inv.default: _erfinv}
