"""Tiny Hugging Face models and PEFT adapters: ``loramgr demo-model``, the demo, tests and benchmarks
(needs the ``[export]`` extra). Seeded, no model hub: everything is made locally in a second."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loramgr.errors import UsageError
from loramgr.records import JsonRecord


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()


def peft_adapter(model: Any, out: Path, seed: int = 1, **lora_kwargs: Any) -> Any:
    """A PEFT model around ``model`` with non-zero LoRA B (so the adapter changes outputs), saved to
    ``out`` as a PEFT directory; returns the PEFT model (eval)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora_kwargs)).eval()
    pm.save_pretrained(str(out))
    return pm


_ATT = ("q_proj", "k_proj", "v_proj", "o_proj")

#: family -> (config class, model class, config overrides, the targets its PEFT adapters usually take).
#: Tiny and varied on purpose: 3 layers so Gemma mixes sliding and global layers, a window of 3 so a
#: short generation runs past it, GQA everywhere.
FAMILIES: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, ("q_proj", "v_proj")),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 3}, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, ("q_proj", "v_proj")),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"head_dim": 16, "sliding_window": 3, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
        ("q_proj", "v_proj", "gate_proj"),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": 3,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        },
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.3, "logits_scaling": 1.5},
        ("q_proj", "v_proj", "down_proj"),
    ),
    # -- second round: the real configs of shipped models (docs/export.md) --------------------------
    "phi3_longrope": (  # Phi-3.5/Phi-4-mini: short/long factors switching at 8 positions (a test runs past it)
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "original_max_position_embeddings": 8,
            "rope_scaling": {
                "rope_type": "longrope",
                "short_factor": [1.0, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0, 2.5],
                "long_factor": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0],
            },
        },
        ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}, _ATT),
    "qwen2_moe": (  # a shared expert with its own sigmoid gate; LoRA on its MLP too
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 48,
        },
        ("q_proj", "v_proj", "gate_proj", "up_proj"),
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2}, _ATT),
    "granitemoe": (  # Granite's multipliers over parallel (input/output linear) experts
        "GraniteMoeConfig",
        "GraniteMoeForCausalLM",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "embedding_multiplier": 2.0, "residual_multiplier": 0.5},
        _ATT,
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16},
        _ATT,
    ),
    "gpt_oss": (  # router biases, clamped SwiGLU experts with biases, attention sinks, sliding layers
        "GptOssConfig",
        "GptOssForCausalLM",
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "head_dim": 16,
            "sliding_window": 3,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        },
        _ATT,
    ),  # fmt: skip
    "deepseek_v3": (  # multi-head latent attention (K and V cached at different widths), routed + shared experts
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "num_key_value_heads": 4,
            "moe_intermediate_size": 32,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": 32,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 16,
        },
        ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
    ),  # fmt: skip
    "deepseek_v2": (  # complex-number RoPE, no q LoRA rank
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        {
            "num_key_value_heads": 4,
            "moe_intermediate_size": 32,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": None,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 16,
        },
        ("q_proj", "kv_b_proj", "o_proj"),
    ),  # fmt: skip
    "gemma3n": (  # KV sharing (the last 2 of 4 layers reuse K/V), AltUp, LAuReL, per-layer inputs, sparsity
        "Gemma3nTextConfig",
        "Gemma3nForCausalLM",
        {
            "num_hidden_layers": 4,
            "head_dim": 16,
            "vocab_size_per_layer_input": 128,
            "hidden_size_per_layer_input": 8,
            "sliding_window": 3,
            "num_kv_shared_layers": 2,
            "laurel_rank": 4,
            "altup_num_inputs": 2,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0],
        },
        _ATT,
    ),  # fmt: skip
    "llama4": (  # chunked attention (chunks of 4), NoPE layers, complex RoPE, a routed + shared expert MoE
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        {
            "head_dim": 16,
            "intermediate_size_mlp": 96,
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "attention_chunk_size": 4,
            "interleave_moe_layer_step": 1,
        },
        _ATT,
    ),  # fmt: skip
    "falcon": (  # new decoder architecture: parallel attention + MLP, grouped KV, `transformer.h`
        "FalconConfig",
        "FalconForCausalLM",
        {"num_kv_heads": 2, "new_decoder_architecture": True},
        ("query_key_value", "dense"),
    ),
    "falcon_alibi": (  # Falcon-RW style: ALiBi (bf16 slopes), multi-query
        "FalconConfig",
        "FalconForCausalLM",
        {"alibi": True, "multi_query": True, "parallel_attn": False},
        ("query_key_value", "dense_h_to_4h"),
    ),
    "bloom": ("BloomConfig", "BloomForCausalLM", {}, ("query_key_value", "dense")),
    "opt": (  # learned positions (offset 2), the final norm declared before the layers
        "OPTConfig",
        "OPTForCausalLM",
        {"ffn_dim": 96, "word_embed_proj_dim": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        ("q_proj", "v_proj", "out_proj"),
    ),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", {"rotary_dim": 8}, ("q_proj", "v_proj", "out_proj", "fc_in")),
}


def tiny_family(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny random causal LM of ``family`` (a key of ``FAMILIES``), seeded."""
    import transformers

    cfg_name, model_name, extra, _ = FAMILIES[family]
    kw: dict[str, Any] = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**(kw | extra | overrides)))
    with torch.no_grad():  # some families zero-init norms or biases: random values so every term counts
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@dataclass(frozen=True)
class DemoModel(JsonRecord):
    """What ``loramgr demo-model --json`` prints."""

    family: str
    model: str
    adapters: list[str]
    target_modules: list[str]


def write_demo_model(family: str, out: Path, *, seed: int = 0, adapters: int = 2) -> DemoModel:
    """A tiny seeded model of ``family`` at ``out/model`` and ``adapters`` PEFT adapters for it at
    ``out/adapter-N`` (rank 8 on the family's usual targets): something to try loramgr on."""
    families = sorted([*FAMILIES, "gpt2"])
    if family not in families:
        raise UsageError(f"demo-model {family}", f"unknown family; one of: {', '.join(families)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"-o {out}", "exists and is not an empty directory")
    targets: tuple[str, ...]
    if family == "gpt2":
        model, targets = tiny_gpt2(), ("c_attn",)
    else:
        model, targets = tiny_family(family, seed), FAMILIES[family][3]
    model.save_pretrained(out / "model")
    made = []
    for i in range(adapters):  # PEFT wraps the model it is given: each adapter gets its own copy
        peft_adapter(copy.deepcopy(model), out / f"adapter-{i}", seed=seed + 1 + i, target_modules=list(targets), r=8)
        made.append(str(out / f"adapter-{i}"))
    return DemoModel(family, str(out / "model"), made, list(targets))
