"""The exported graphs' contract, and the one family-specific rewrite (GPT-2).

Every graph is one part of ``prefill`` or ``decode`` (batch 1, static shapes, as HTP wants):
- inputs ``input_ids [1, q]`` (first part) or ``hidden_states [1, q, hidden]`` (later parts),
  ``attention_mask [1, P + q]`` (1 = attend), ``position_ids [1, q]``; graphs with a KV cache also
  ``past_key_values.<layer>.key|value [1, heads, P, dim]`` for each layer that keeps K/V of its own
  (``Layout.cache``: heads and dims as the model caches them, e.g. DeepSeek's K and V differ; Gemma 3n's
  KV-shared layers keep none);
- LoRA inputs ``<module_path>.lora_A.weight [in, R]`` / ``.lora_B.weight [R, out]`` per attachment
  point, zero by default (= the base model), and ``lora_alpha``; with alpha slots (use cases)
  ``lora_alpha [1, N]`` and ``<module_path>.lora_indices [1, R]`` (docs/conventions.md); longrope
  models also ``rope_long [1]`` (int64, default 0: HF's per-call choice; 1: the long factors, for
  recomputing the cache once the sequence passes ``original_max_position_embeddings``, as HF does);
- outputs ``logits`` (last part) or ``hidden_states_out``, and ``present.<layer>.key|value
  [1, heads, q, dim]`` (the new entries only: the runtime writes them into its cache).

Decoder-only models go through the model's own ``forward`` (``export/generic.py``). GPT-2 keeps a
re-stated decoder loop here: its projections are transformers' ``Conv1D`` (``[in, out]`` weights),
not ``nn.Linear``, and its learned position embeddings are added before the first layer in a way the
generic part boundary cannot take apart (docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loramgr.export.layout import Layout, LoraTarget


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


def lora_inputs_of(
    d: dict[str, torch.Tensor], targets: set[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Per attachment point, its (A, B, slot indices or None) graph inputs."""
    return {t: (d[f"{t}.lora_A.weight"], d[f"{t}.lora_B.weight"], d.get(f"{t}.lora_indices")) for t in targets}


def alpha_of(d: dict[str, torch.Tensor], spec: GraphSpec, dtype: torch.dtype) -> torch.Tensor | None:
    alpha = d["lora_alpha"].to(dtype) if "lora_alpha" in d else None
    if alpha is not None and spec.max_adapters:  # [1, N] -> [1, N + 1]: the last slot is 0 (padding)
        alpha = torch.cat([alpha, torch.zeros(1, 1, dtype=dtype)], dim=1)
    return alpha


def lora_branch(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    idx: torch.Tensor | None,
    alpha: torch.Tensor | None,
) -> torch.Tensor:
    """``y + alpha * (x @ A) @ B``; with alpha slots ``y + ((x @ A) * alpha[indices]) @ B``."""
    xa = torch.matmul(x, a)
    if idx is not None and alpha is not None:
        # alpha[indices] as alpha @ one_hot(indices): the same values (one product per column), and a
        # MatMul where a Gather of fp32 values fails to finalize in the HTP simulator's fp32 mode
        slots = torch.arange(alpha.shape[1], dtype=idx.dtype).reshape(-1, 1)
        picked = torch.matmul(alpha, (slots == idx[0].reshape(1, -1)).to(alpha.dtype))
        return y + torch.matmul(xa * picked, b)
    branch = torch.matmul(xa, b)
    return y + (branch if alpha is None else branch * alpha)


def mask_bias(
    mask: torch.Tensor, position_ids: torch.Tensor, past_len: int, window: int | None = None, chunk: int | None = None
) -> torch.Tensor:
    """Additive fp32 bias ``[1, 1, q, P + q]`` from ``attention_mask [1, P + q]``: past entries where
    the mask is 1, new entries causally; with ``window``, keys ``window`` or more positions behind the
    query are dropped too, with ``chunk`` keys in another chunk of ``chunk`` positions than the query
    (past slot ``j`` holds position ``j``, as loramgr's runtime fills it).
    fp32 even in fp16 graphs: added to the scores, it promotes them, so the softmax never overflows."""
    q = position_ids.shape[-1]
    m = mask.to(torch.bool)
    causal = torch.ones(q, q, dtype=torch.bool).tril()
    new = causal[None, None] & m[:, None, None, past_len:]
    allowed = torch.cat([m[:, None, None, :past_len].expand(1, 1, q, past_len), new], dim=-1) if past_len else new
    if window or chunk:
        qpos = position_ids.reshape(q, 1)
        kpos = torch.cat([torch.arange(past_len, dtype=qpos.dtype), position_ids.reshape(q)]).reshape(1, -1)
        if window:
            allowed = allowed & ((qpos - kpos) < window)[None, None]
        if chunk:
            allowed = (
                allowed
                & (torch.div(qpos, chunk, rounding_mode="floor") == torch.div(kpos, chunk, rounding_mode="floor"))[
                    None, None
                ]
            )
    # 0 where allowed, the fp32 minimum elsewhere, as a product rather than a Where: the same values, and
    # an fp32 Where fails to finalize in the HTP simulator's fp32 mode (export/htp_clean.py)
    return (~allowed).to(torch.float32) * torch.finfo(torch.float32).min


class GraphModule(nn.Module):
    """What every exported graph shares: its input and output names and example inputs."""

    def __init__(self, model: Any, lay: Layout, spec: GraphSpec) -> None:
        super().__init__()
        # an HF model: its submodules are looked up by name, so Any
        self.model: Any = model
        self.lay, self.spec = lay, spec
        self.targets = {t.module_path for t in spec.targets}
        self.cached = [i for i in range(*spec.layers) if i in lay.cache]  # layers that keep K/V of their own
        self.input_names = self._input_names()
        self.output_names = (["logits"] if spec.last else ["hidden_states_out"]) + [
            f"present.{i}.{kv}" for i in self.cached for kv in ("key", "value")
        ]

    def _input_names(self) -> list[str]:
        s = self.spec
        names = ["input_ids" if s.first else "hidden_states", "attention_mask", "position_ids"]
        if s.past_len:
            names += [f"past_key_values.{i}.{kv}" for i in self.cached for kv in ("key", "value")]
        names += [f"{t.module_path}.lora_{x}.weight" for t in s.targets for x in "AB"]
        if s.max_adapters:
            names += [f"{t.module_path}.lora_indices" for t in s.targets]
        names += ["lora_alpha"] if s.targets else []
        return names + (["rope_long"] if self.lay.rope_switch is not None else [])

    def example_inputs(self, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        s, c = self.spec, self.model.config
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
                _, layer, kv = n.split(".")
                heads, dim = self.lay.cache[int(layer)][kv == "value"]
                out.append(torch.zeros(1, heads, s.past_len, dim, dtype=dtype))
            elif n == "rope_long":
                out.append(torch.zeros(1, dtype=torch.int64))
            elif n == "lora_alpha":
                out.append(torch.ones((1, s.max_adapters) if s.max_adapters else (1,), dtype=torch.float32))
            elif n.endswith(".lora_indices"):
                out.append(torch.zeros(1, rank, dtype=torch.int64))
            else:
                out.append(torch.zeros(*lora_shapes[n], dtype=dtype))
        return tuple(out)


class Gpt2Forward(GraphModule):
    """GPT-2's decoder loop over its own modules (``Conv1D`` projections: see the module docstring)."""

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = dict(zip(self.input_names, args, strict=True))
        lora = lora_inputs_of(d, self.targets)
        h0 = d["input_ids"] if self.spec.first else d["hidden_states"]
        dtype = next(self.model.parameters()).dtype
        alpha = alpha_of(d, self.spec, dtype)
        bias = mask_bias(d["attention_mask"], d["position_ids"], self.spec.past_len)
        return self._gpt2(h0, d, lora, alpha, bias)

    def _lin(
        self, mod: Any, path: str, x: torch.Tensor, lora: dict[str, Any], alpha: torch.Tensor | None
    ) -> torch.Tensor:
        y: torch.Tensor = mod(x)
        if path not in lora:
            return y
        a, b, idx = lora[path]
        return lora_branch(x, y, a, b, idx, alpha)

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
        nh, hd = self.lay.kv_heads, self.lay.head_dim
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
