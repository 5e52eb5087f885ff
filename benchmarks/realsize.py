"""The runtime at a real model size: the Llama-3.2-1B configuration with random weights and a rank-64
q/v adapter, the case issue #21 opened with (`loramgr run` then peaked at 10.8 GB of RSS for 4.9 GB of
weights: every graph's session held its own copy). Exported, registered, built and run through the
CLI, as a user would: `base export` wall time and peak RSS, the build output's base bytes over the
base's distinct bytes (graphs that read the same weights share one file), and `loramgr run`'s peak RSS
over the weights, with and without sharing them.

It needs ~17 GB free in the temporary directory at its peak (the Hugging Face checkpoint, the exported
graphs and the store's copy of them) and ~9 GB of memory for the export; the checkpoint and the export
directory are deleted once the base is registered."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

from benchmarks.measure import Row
from benchmarks.models import lm
from benchmarks.runtime import rss_row
from benchmarks.scale import ABSOLUTE, cli_peak

#: Llama-3.2-1B's published shape (config.json of meta-llama/Llama-3.2-1B): no hub here, so the
#: shape is written down and the weights are random
LLAMA_3_2_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
#: the same family at a size CI can afford (``--quick``): every row present, no figure judged
QUICK = {**LLAMA_3_2_1B, "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2}
QUICK.update(num_attention_heads=4, num_key_value_heads=2)

NEEDS_FREE = 17 << 30


def bench_real_size(tmp: Path, quick: bool) -> list[Row]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loramgr.export.tiny import peft_adapter

    shape = QUICK if quick else LLAMA_3_2_1B
    free = shutil.disk_usage(tmp).free
    if not quick and free < NEEDS_FREE:
        raise RuntimeError(f"{tmp}: the real-size step needs {NEEDS_FREE >> 30} GiB free, {free >> 30} GiB is")
    label = "Llama-3.2-1B shape" if not quick else f"Llama, hidden {shape['hidden_size']}, quick"
    root = tmp / "real"
    hf, onnx_dir, home, out = root / "hf", root / "onnx", root / "home", root / "out"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
    model.save_pretrained(hf)
    # then the adapter: PEFT injects its layers into this very model
    peft_adapter(model, root / "ad", seed=1, r=64, lora_alpha=64, target_modules=["q_proj", "v_proj"])
    del model
    gc.collect()

    args = ["base", "export", str(hf), "--name", "real", "--target-modules", "q_proj,v_proj", "--max-rank", "64"]
    export_s, export_peak = cli_peak(root / "export.maxrss", [*args, "-o", str(onnx_dir)], home)
    checkpoint = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    shutil.rmtree(hf)
    shutil.rmtree(onnx_dir)  # the store holds the registered graphs

    lm(home, "register", root / "ad", "--name", "ad")
    lm(home, "validate", "ad", "--base", "real")
    lm(home, "build", "--base", "real", "-o", out)
    lm(home, "plan", "--base", "real")
    placed = sum(f.stat().st_size for f in (out / "base").rglob("*") if f.is_file())
    stored = base_store_bytes(home)
    run = rss_row(out / "plan.json", "ad", home)
    own = rss_row(out / "plan.json", "ad", home, ("--no-share-weights",))
    return [
        Row(
            "export_real_size",
            f"base export, {label} ({checkpoint >> 20} MiB checkpoint)",
            ABSOLUTE,
            [1.0],
            [export_s],
            "s",
            note=f"report: wall seconds; peak RSS {export_peak >> 20} MiB "
            f"({export_peak / checkpoint:.1f}x the checkpoint)",
        ),
        Row(
            "build_base_bytes",
            f"the base's files in a build's output ({label}: prefill + decode, parts)",
            "the base's distinct files in the store",
            [stored],
            [placed],
            "bytes",
            note="graphs that read the same external data share one file in OUT/base",
        ),
        Row(
            "run_rss_real_size",
            f"peak RSS of `loramgr run`, {label}, rank-64 q/v adapter",
            run.baseline,
            run.baseline_values,
            run.subject_values,
            "bytes",
            goal=1.25,
            note="one mapped copy of the weights for every graph's session; the input embedding table is "
            "read a row per token, so most of it is never paged in",
        ),
        Row(
            "run_rss_real_size_unshared",
            f"the same with --no-share-weights ({label})",
            own.baseline,
            own.baseline_values,
            own.subject_values,
            "bytes",
            note="each graph's session loads and pre-packs its own copy, as `loramgr run` did when issue #21 was filed",
        ),
    ]


def base_store_bytes(home: Path) -> int:
    """Bytes of the base's distinct files (graphs and external data), as the registry lists them."""
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    reg = Registry(Settings.resolve(str(home)))
    base = reg.base("real")
    reg.close()
    files = {g.sha256: g.size for g in base.graphs}
    files.update({e.sha256: e.size for g in base.graphs for e in g.external_data})
    return sum(files.values())


__all__ = ["bench_real_size"]
