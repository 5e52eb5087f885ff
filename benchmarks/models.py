"""Models and sessions the runtime benchmarks share: a Llama-shaped HF model exported with and
without LoRA inputs, ORT sessions and decode feeds, and a registered base with two PEFT adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def lm(home: Path, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The loramgr CLI in a child process on its own registry home (SQLite)."""
    env = dict(os.environ, LORAMGR_HOME=str(home))
    env.pop("LORAMGR_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "loramgr", *map(str, args)], env=env, text=True, capture_output=True, check=check
    )


def llama(tmp: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(4, hidden // 64),
        num_key_value_heads=max(4, hidden // 64),
        max_position_embeddings=512,
    )
    d = tmp / f"hf-{hidden}x{layers}"
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return d


def export(hf: Path, out: Path, targets: list[str], rank: int, graphs: str, ctx: int) -> dict[str, Any]:
    from loramgr.export import ExportOptions, export_base

    return export_base(hf, out, ExportOptions(targets=targets, max_rank=rank, graphs=graphs, context_len=ctx))


def export_without_lora(hf: Path, out: Path, q: int, past: int) -> Path:
    """The same decode graph with no LoRA branches (the overhead baseline)."""
    import torch
    from transformers import AutoModelForCausalLM

    from loramgr.export import _export_one
    from loramgr.export.generic import with_cache
    from loramgr.export.layout import layout_of
    from loramgr.export.model import GraphSpec
    from loramgr.export.onnx_io import save_sharing_weights

    model = AutoModelForCausalLM.from_pretrained(
        hf, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    lay = with_cache(model, layout_of(model))
    spec = GraphSpec("decode", q, past, (0, len(lay.layers)), True, True)
    proto = _export_one(model, lay, spec, 1, torch.float32, "float32")
    save_sharing_weights({"plain.onnx": proto}, out, "plain.data")
    return out / "plain.onnx"


def options() -> Any:
    """Session options every benchmark session uses, subject and baseline alike: ONNX Runtime's
    defaults (thread-pool spinning on, as a runtime would run), quiet. Two sessions in one process
    interfere through their spinning pools, so the A/B rows pause between trials (``interleave(...,
    pause=)``): measured without the pause, a session came out ~10% faster than a second session of
    the very same model, whichever was the subject."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def shared_session(path: Path, weights: Any, graph: str) -> Any:
    """A session of the model at ``path`` whose initializers are ``weights``' mapping of ``graph``
    (by name; a model exported from the same checkpoint names its weights alike): the baseline on the
    very same weight memory as the subject, so only the graphs differ."""
    import onnx
    import onnxruntime as ort

    so = options()
    so.add_session_config_entry("session.disable_prepacking", "1")
    names = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    shared = {k: v for k, v in weights.initializers(graph).items() if k in names}
    if not shared:
        raise RuntimeError(f"{path}: no initializer of {graph} is named alike")
    for name, value in shared.items():
        so.add_initializer(name, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options(), providers=["CPUExecutionProvider"])


def lora_setup(tmp: Path, hf: Path, rank: int) -> tuple[Path, Path, list[str]]:
    """Export (prefill + decode), register 2 PEFT adapters, build --share-adapters, plan."""
    from loramgr.export.tiny import peft_adapter

    home = tmp / "home-lora"
    man = export(hf, tmp / "onnx", ["q_proj", "k_proj", "v_proj", "o_proj"], rank, "prefill=16,decode=1", 64)
    args = [a for g in man["graphs"] for a in ("--graph", f"{g['name']}={tmp / 'onnx' / g['file']}")]
    lm(home, "base", "register", "--name", "b", *args)
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(2):
        m = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
        peft_adapter(
            m, tmp / f"ad{i}", seed=i, r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        lm(home, "register", tmp / f"ad{i}", "--name", f"ad{i}")
        lm(home, "validate", f"ad{i}", "--base", "b")
        names.append(f"ad{i}")
    lm(home, "build", "--base", "b", "-o", tmp / "out-per-graph")
    lm(home, "build", "--base", "b", "--share-adapters", "-o", tmp / "out")
    lm(home, "plan", "--base", "b")  # the newest build: the super-adapter one
    return home, tmp / "out" / "plan.json", names
