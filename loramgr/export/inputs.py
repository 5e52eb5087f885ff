"""What ``base export`` accepts: a local Hugging Face directory, its config and its weights.

Checked in the order they are read: the directory and config before transformers parses them, the
config's numbers and the weights' format before any weight is loaded, the loaded weights before a
graph is written. Every refusal is one line naming the file (exit 2 or 4), never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError, UsageError
from loramgr.infra.files import read_text, readable_dir

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_hf_dir(hf: Path) -> None:
    """A local Hugging Face model directory loramgr may load: a readable ``config.json`` object that
    needs no remote code."""
    readable_dir(hf, "Hugging Face model directory")
    if not (hf / "config.json").exists():
        raise InvalidInputError(str(hf), "is not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(read_text(hf / "config.json", 16 << 20, "model config"))
    except (ValueError, RecursionError) as e:
        raise InvalidInputError(str(hf / "config.json"), f"is not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise InvalidInputError(str(hf / "config.json"), "is not a JSON object")
    if cfg.get("auto_map"):
        raise UsageError(str(hf), "needs custom model code (auto_map / trust_remote_code); remote code never runs")


def check_weights(hf: Path) -> None:
    """Safetensors weights are there (a pickle-only checkpoint is refused with the conversion hint)."""
    if not list(hf.glob("*.safetensors")):
        pickles = sorted(p.name for pat in PICKLE_WEIGHTS for p in hf.glob(pat))
        if pickles:
            raise InvalidInputError(
                str(hf / pickles[0]),
                "is a pickle checkpoint; loramgr never unpickles model files",
                hint="convert it once where you trust it: AutoModelForCausalLM.from_pretrained(DIR)"
                ".save_pretrained(NEW_DIR, safe_serialization=True)",
            )
        raise InvalidInputError(str(hf), "has no weights (*.safetensors)")


def check_finite_config(cfg: Any, path: Path, where: str = "", defaults: Any = None) -> None:
    """No NaN or Inf among the config's numbers (``rms_norm_eps: NaN`` exports a graph whose every
    output is NaN): refused naming the field, before any weight is read. An infinity the config
    class itself defaults to (Mamba-2's ``time_step_limit: [0, inf]``) is the model's own."""
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg) if isinstance(cfg, list) else ()
    for k, v in items:
        field = f"{where}.{k}" if where else str(k)
        default = _at(defaults, k)
        if isinstance(v, float) and not math.isfinite(v) and not (math.isinf(v) and default == v):
            raise InvalidInputError(str(path), f"field {field!r} is {v}, not a finite number")
        check_finite_config(v, path, field, default)


def _at(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list | tuple) and isinstance(key, int) and 0 <= key < len(container):
        return container[key]
    return None


def check_finite_weights(model: Any, hf: Path, precision: str) -> None:
    """Every weight finite in the precision the graphs hold: a NaN or Inf in the checkpoint, or a value
    past float16's 65504 in an fp16 export, would make every logit NaN with exit 0 later."""
    import torch

    for name, t in model.named_parameters():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInputError(
                str(hf), f"weight {name!r} holds NaN or Inf" + (" once cast to fp16" if precision == "fp16" else "")
            )
