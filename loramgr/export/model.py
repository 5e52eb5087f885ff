"""A LoRA-ready forward over a Hugging Face causal LM's own modules, for export.

Why not export the HF ``forward``: its cache classes and mask helpers change between transformers
releases and do not give the static, explicit signature an on-device runtime needs. This module
re-states the decoder loop (Llama-style: Llama, Mistral, Qwen2; and GPT-2), calling the model's own
submodules (embeddings, norms, rotary embedding, activation, projections) so numerics stay HF's, and
adds at every target projection ``y += lora_alpha * (x @ A) @ B`` where ``A [in, R]`` and ``B [R, out]``
are graph inputs named ``<module_path>.lora_A.weight`` / ``.lora_B.weight`` (DESIGN.md section 4).

Signature (batch 1, static shapes, as HTP wants):
- ``input_ids [1, q]`` (first part) or ``hidden_states [1, q, hidden]`` (later parts),
  ``attention_mask [1, P + q]`` (1 = attend), ``position_ids [1, q]``;
- graphs with a KV cache: ``past_key_values.<layer>.key|value [1, kv_heads, P, head_dim]``;
- outputs ``logits`` (last part) or ``hidden_states``, and ``present.<layer>.key|value
  [1, kv_heads, q, head_dim]`` (the new entries only: the runtime writes them into its cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LLAMA_TYPES = ("llama", "mistral", "qwen2")
GPT2_TYPES = ("gpt2",)
TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def family_of(config: Any) -> str:
    from loramgr.errors import UsageError

    mt = getattr(config, "model_type", None)
    if mt in LLAMA_TYPES:
        return "llama"
    if mt in GPT2_TYPES:
        return "gpt2"
    raise UsageError(
        f"model_type {mt!r}", "is not supported by `base export`; supported: " + ", ".join(LLAMA_TYPES + GPT2_TYPES)
    )


@dataclass
class LoraTarget:
    module_path: str
    in_features: int
    out_features: int


@dataclass
class GraphSpec:
    name: str
    q_len: int
    past_len: int  # 0: no KV-cache inputs (prefill)
    layers: tuple[int, int]  # [first, last) decoder layers of this part
    first: bool
    last: bool
    part: int = 0
    targets: list[LoraTarget] = field(default_factory=list)
    max_adapters: int | None = None  # alpha slots N: lora_alpha [1, N] and `<module>.lora_indices` [1, R]


def _features(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)  # transformers' Conv1D stores [in, out]
    if w is not None and w.dim() == 2 and type(mod).__name__ == "Conv1D":
        return int(w.shape[0]), int(w.shape[1])
    raise TypeError(f"{type(mod).__name__} is not a Linear or Conv1D")


def layer_prefix(family: str, layer: int) -> str:
    return f"model.layers.{layer}" if family == "llama" else f"transformer.h.{layer}"


def find_targets(model: nn.Module, family: str, wanted: list[str], layers: tuple[int, int]) -> list[LoraTarget]:
    """Projection modules of ``layers`` whose leaf name (or path suffix) is in ``wanted``."""
    out = []
    prefixes = tuple(layer_prefix(family, i) + "." for i in range(*layers))
    for path, mod in model.named_modules():
        if not path.startswith(prefixes):
            continue
        if any(path == w or path.endswith("." + w) for w in wanted):
            fi, fo = _features(mod)
            out.append(LoraTarget(path, fi, fo))
    return out


def check_targets(family: str, wanted: list[str]) -> None:
    from loramgr.errors import UsageError

    bad = [w for w in wanted if w.rsplit(".", 1)[-1] not in TARGETS[family]]
    if bad:
        raise UsageError(
            f"--target-modules {','.join(bad)}",
            f"not supported for {family}-style models; supported: {', '.join(TARGETS[family])}",
        )


def num_layers(model: Any, family: str) -> int:
    return len(model.model.layers) if family == "llama" else len(model.transformer.h)


def kv_shape(model: Any, family: str) -> tuple[int, int]:
    """(kv heads, head dim)."""
    c = model.config
    if family == "llama":
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_key_value_heads or c.num_attention_heads, hd
    return c.num_attention_heads, c.hidden_size // c.num_attention_heads


class LoraForward(nn.Module):
    """One exportable graph (a part of prefill or decode) over ``model``'s modules."""

    def __init__(self, model: Any, family: str, spec: GraphSpec) -> None:
        super().__init__()
        # an HF model: its submodules (model.layers, transformer.h, ...) are looked up by name, so Any
        self.model: Any = model
        self.family, self.spec = family, spec
        self.targets = {t.module_path for t in spec.targets}
        self.input_names = self._input_names()
        self.output_names = (["logits"] if spec.last else ["hidden_states_out"]) + [
            f"present.{i}.{kv}" for i in range(*spec.layers) for kv in ("key", "value")
        ]

    def _input_names(self) -> list[str]:
        s = self.spec
        names = ["input_ids" if s.first else "hidden_states", "attention_mask", "position_ids"]
        if s.past_len:
            names += [f"past_key_values.{i}.{kv}" for i in range(*s.layers) for kv in ("key", "value")]
        names += [f"{t.module_path}.lora_{x}.weight" for t in s.targets for x in "AB"]
        if s.max_adapters:
            names += [f"{t.module_path}.lora_indices" for t in s.targets]
        return names + (["lora_alpha"] if s.targets else [])

    def example_inputs(self, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        s, c = self.spec, self.model.config
        kvh, hd = kv_shape(self.model, self.family)
        lora_shapes = {f"{t.module_path}.lora_A.weight": (t.in_features, rank) for t in s.targets}
        lora_shapes |= {f"{t.module_path}.lora_B.weight": (rank, t.out_features) for t in s.targets}
        out: list[torch.Tensor] = []
        for n in self.input_names:
            if n == "input_ids":
                out.append(torch.zeros(1, s.q_len, dtype=torch.int64))
            elif n == "hidden_states":
                out.append(torch.zeros(1, s.q_len, c.hidden_size, dtype=dtype))
            elif n == "attention_mask":
                out.append(torch.ones(1, s.past_len + s.q_len, dtype=torch.int64))
            elif n == "position_ids":
                out.append(torch.arange(s.q_len, dtype=torch.int64)[None])
            elif n.startswith("past_key_values."):
                out.append(torch.zeros(1, kvh, s.past_len, hd, dtype=dtype))
            elif n == "lora_alpha":
                out.append(torch.ones((1, s.max_adapters) if s.max_adapters else (1,), dtype=torch.float32))
            elif n.endswith(".lora_indices"):
                out.append(torch.zeros(1, rank, dtype=torch.int64))
            else:
                out.append(torch.zeros(*lora_shapes[n], dtype=dtype))
        return tuple(out)

    # -- the forward ---------------------------------------------------------------------------------
    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = dict(zip(self.input_names, args, strict=True))
        lora = {t: (d[f"{t}.lora_A.weight"], d[f"{t}.lora_B.weight"], d.get(f"{t}.lora_indices")) for t in self.targets}
        h0 = d["input_ids"] if self.spec.first else d["hidden_states"]
        dtype = next(self.model.parameters()).dtype
        alpha = d["lora_alpha"].to(dtype) if "lora_alpha" in d else None
        if alpha is not None and self.spec.max_adapters:  # [1, N] -> [1, N + 1]: the last slot is 0 (padding)
            alpha = torch.cat([alpha, torch.zeros(1, 1, dtype=dtype)], dim=1)
        bias = self._mask_bias(d["attention_mask"], dtype)
        run = self._llama if self.family == "llama" else self._gpt2
        return run(h0, d, lora, alpha, bias)

    def _lin(
        self, mod: Any, path: str, x: torch.Tensor, lora: dict[str, Any], alpha: torch.Tensor | None
    ) -> torch.Tensor:
        y: torch.Tensor = mod(x)
        if path in lora:
            a, b, idx = lora[path]
            xa = torch.matmul(x, a)
            if idx is not None and alpha is not None:  # alpha slots: ((x @ A) * alpha[indices]) @ B
                return y + torch.matmul(xa * torch.index_select(alpha, 1, idx[0]), b)
            branch = torch.matmul(xa, b)
            y = y + (branch if alpha is None else branch * alpha)
        return y

    def _mask_bias(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias ``[1, 1, q, P + q]``: past entries where the mask is 1, new entries causally."""
        q, p = self.spec.q_len, self.spec.past_len
        m = mask.to(torch.bool)
        causal = torch.ones(q, q, dtype=torch.bool).tril()
        new = causal[None, None] & m[:, None, None, p:]
        allowed = torch.cat([m[:, None, None, :p].expand(1, 1, q, p), new], dim=-1) if p else new
        zero = torch.zeros((), dtype=torch.float32)
        neg = torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32)
        return torch.where(allowed, zero, neg)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        scaling: float,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        groups: int,
    ) -> torch.Tensor:
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * scaling + bias
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        o = torch.matmul(probs, v)
        return o.transpose(1, 2).reshape(1, self.spec.q_len, -1)

    def _past(self, d: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.spec.past_len:
            return None
        return d[f"past_key_values.{i}.key"], d[f"past_key_values.{i}.value"]

    def _llama(
        self,
        h0: torch.Tensor,
        d: dict[str, torch.Tensor],
        lora: dict[str, Any],
        alpha: torch.Tensor | None,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        m, s = self.model.model, self.spec
        h = m.embed_tokens(h0) if s.first else h0
        cos, sin = m.rotary_emb(h, d["position_ids"])
        kvh, hd = kv_shape(self.model, "llama")
        nh = self.model.config.num_attention_heads
        presents: list[torch.Tensor] = []
        for i in range(*s.layers):
            layer, p = m.layers[i], f"model.layers.{i}"
            at, mlp = layer.self_attn, layer.mlp
            x = layer.input_layernorm(h)
            q = self._lin(at.q_proj, f"{p}.self_attn.q_proj", x, lora, alpha).view(1, s.q_len, nh, hd).transpose(1, 2)
            k = self._lin(at.k_proj, f"{p}.self_attn.k_proj", x, lora, alpha).view(1, s.q_len, kvh, hd).transpose(1, 2)
            v = self._lin(at.v_proj, f"{p}.self_attn.v_proj", x, lora, alpha).view(1, s.q_len, kvh, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            presents += [k, v]
            o = self._attend(q, k, v, bias, at.scaling, self._past(d, i), nh // kvh)
            h = h + self._lin(at.o_proj, f"{p}.self_attn.o_proj", o, lora, alpha)
            x = layer.post_attention_layernorm(h)
            gate = self._lin(mlp.gate_proj, f"{p}.mlp.gate_proj", x, lora, alpha)
            up = self._lin(mlp.up_proj, f"{p}.mlp.up_proj", x, lora, alpha)
            h = h + self._lin(mlp.down_proj, f"{p}.mlp.down_proj", mlp.act_fn(gate) * up, lora, alpha)
        if s.last:
            h = self.model.lm_head(m.norm(h))
        return (h, *presents)

    def _gpt2(
        self,
        h0: torch.Tensor,
        d: dict[str, torch.Tensor],
        lora: dict[str, Any],
        alpha: torch.Tensor | None,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        t, s = self.model.transformer, self.spec
        h = t.wte(h0) + t.wpe(d["position_ids"]) if s.first else h0
        nh, hd = kv_shape(self.model, "gpt2")
        e = nh * hd
        presents: list[torch.Tensor] = []
        for i in range(*s.layers):
            blk, p = t.h[i], f"transformer.h.{i}"
            x = blk.ln_1(h)
            qkv = self._lin(blk.attn.c_attn, f"{p}.attn.c_attn", x, lora, alpha)
            q, k, v = (z.view(1, s.q_len, nh, hd).transpose(1, 2) for z in torch.split(qkv, e, dim=2))
            presents += [k, v]
            o = self._attend(q, k, v, bias, blk.attn.scaling, self._past(d, i), 1)
            h = h + self._lin(blk.attn.c_proj, f"{p}.attn.c_proj", o, lora, alpha)
            x = blk.ln_2(h)
            mid = blk.mlp.act(self._lin(blk.mlp.c_fc, f"{p}.mlp.c_fc", x, lora, alpha))
            h = h + self._lin(blk.mlp.c_proj, f"{p}.mlp.c_proj", mid, lora, alpha)
        if s.last:
            h = self.model.lm_head(t.ln_f(h))
        return (h, *presents)
