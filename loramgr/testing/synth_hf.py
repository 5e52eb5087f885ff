"""Tiny Hugging Face models and PEFT adapters for the demo, tests and benchmarks (needs the
``[export]`` extra). Seeded, no model hub: everything is made locally in a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


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
