"""Quantization with Qualcomm's AIMET (``calibrate --engine aimet``): report rows.

- ``calibrate_aimet_per_adapter_s``: per adapter, one ``calibrate --engine aimet --all`` over N
  adapters (one process: the simulations are built and the base calibrated once, its encodings reused)
  against N ``calibrate --engine aimet ADAPTER`` runs (each builds the simulations and calibrates the
  base again): the same encodings, divided by N on both sides.
- ``w8a16_cosine`` / ``w8a8_cosine``: per adapter, the cosine of the quantized build's simulated logits
  (base and adapter encodings applied, ``verify``'s simulation) against PEFT fp32, against PEFT's own
  agreement with itself (1).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks.measure import Row, interleave, self_timed
from benchmarks.models import llama, lm


def _setup(tmp: Path, home: Path, hidden: int, layers: int, adapters: int) -> Path:
    """A Llama exported with int8 LoRA inputs, ``adapters`` PEFT adapters registered, a calibration set."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from loramgr.export.tiny import peft_adapter

    hf = llama(tmp, hidden, layers)
    lm(home, "base", "export", hf, "--name", "q", "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--graphs", "prefill=16", "--context-len", "32", "--quantized-lora", "8", "-o", tmp / "q-onnx")  # fmt: skip
    for i in range(adapters):
        model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
        peft_adapter(model, tmp / f"q-ad{i}", seed=40 + i, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        lm(home, "register", tmp / f"q-ad{i}", "--name", f"q-ad{i}")
        lm(home, "validate", f"q-ad{i}", "--base", "q")
    rng = np.random.default_rng(0)
    data = tmp / "calib.jsonl"
    data.write_text("".join(json.dumps({"input_ids": rng.integers(0, 512, 16).tolist()}) + "\n" for _ in range(8)))
    return data


def bench_quant(tmp: Path, quick: bool) -> list[Row]:
    home = tmp / "home-quant"
    n = 3 if quick else 10
    hidden, layers = (64, 2) if quick else (256, 4)
    data = _setup(tmp, home, hidden, layers, n)
    size = f"Llama hidden {hidden} x {layers} layers"

    def together() -> float:
        t = time.perf_counter()
        lm(home, "calibrate", "--base", "q", "--all", "--data", data, "--engine", "aimet", "--scheme", "w8a16")
        return (time.perf_counter() - t) / n

    def apart() -> float:
        t = time.perf_counter()
        for i in range(n):
            lm(home, "calibrate", f"q-ad{i}", "--base", "q", "--data", data, "--engine", "aimet", "--scheme", "w8a16")
        return (time.perf_counter() - t) / n

    trials = interleave(apart, together, 2 if quick else 3, warmup=0, timer=self_timed)
    rows = [
        Row.timed(
            "calibrate_aimet_per_adapter_s",
            f"AIMET w8a16 calibration per adapter, {n} adapters in one run (base encodings reused; {size})",
            "one run per adapter (simulations built, base calibrated each time)",
            trials,
        )
    ]
    for scheme in ("w8a16", "w8a8"):
        lm(home, "calibrate", "--base", "q", "--all", "--data", data, "--engine", "aimet", "--scheme", scheme)
        out = tmp / f"q-out-{scheme}"
        shutil.rmtree(out, ignore_errors=True)
        lm(home, "build", "--base", "q", "-o", out)
        lm(home, "plan", "--base", "q", "-o", out / "plan.json")
        v = json.loads(lm(home, "verify", "--plan", out / "plan.json", "--json", check=False).stdout)
        v = v.get("details", v)  # a failed verify prints its rows under "details"
        cos = [r["cosine"] for r in v["adapters"]]
        rows.append(
            Row(
                f"{scheme}_cosine",
                f"{scheme} build: cosine of simulated quantized logits vs PEFT fp32, per adapter ({size})",
                "PEFT fp32 itself",
                [1.0] * len(cos),
                cos,
                "cos",
                extra={
                    "min": min(cos),
                    "top1_min": min(r["top1_agreement"] for r in v["adapters"]),
                    "delta_cosine_min": min(r["delta_cosine"] for r in v["adapters"]),
                    "adapters": len(cos),
                },
            )
        )
    return rows
