"""Tiny Hugging Face models and PEFT adapters made in the tests (no model hub), seeded."""

from loramgr.export.tiny import peft_adapter, tiny_gpt2, tiny_llama

__all__ = ["peft_adapter", "tiny_gpt2", "tiny_llama"]
