"""Qualcomm's HTP backend (onnxruntime-qnn), in x86 simulation: report rows, never device speed.

- ``htp_switch_vs_new_session``: apply another adapter + one decode step on one HTP session, against a
  new HTP session from the same compiled context + one decode step (what a runtime without sections
  would pay to change weights).
- ``htp_context_bytes_shared``: the weight-shared context's bytes (prefill and decode in one) against
  the two graphs compiled alone.
- ``htp_compile_s`` / ``htp_compile_s_large``: ``build --backend qnn-ep`` (compiling every graph, shared
  and alone) against ``build --backend ort`` of the same base and adapters, at two model sizes.
- ``htp_fp16_top1_agreement``: top-1 agreement of the SoC's fp16 logits with PEFT fp32 (every adapter
  and the use case), against PEFT's own agreement with itself (1); the relative error rides along.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.measure import Row, interleave
from benchmarks.models import llama, lm

SIM = "x86 simulation"
TARGET = "sm8750"


def _base(tmp: Path, home: Path, hidden: int, layers: int, name: str) -> Path:
    """A Llama of that size exported with two alpha slots, two PEFT adapters and a use case of both."""
    from loramgr.export.tiny import peft_adapter

    hf = llama(tmp, hidden, layers)
    from transformers import AutoModelForCausalLM

    for i in range(2):
        model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
        peft_adapter(model, tmp / f"{name}-ad{i}", seed=20 + i, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    lm(home, "base", "export", hf, "--name", name, "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--max-adapters", "2", "--graphs", "prefill=16,decode=1", "--context-len", "64",
       "-o", tmp / f"{name}-onnx")  # fmt: skip
    for i in range(2):
        lm(home, "register", tmp / f"{name}-ad{i}", "--name", f"{name}-ad{i}")
        lm(home, "validate", f"{name}-ad{i}", "--base", name)
    lm(home, "usecase", "create", f"{name}-both", f"{name}-ad0", f"{name}-ad1", "--base", name)
    return hf


def _compile_rows(tmp: Path, home: Path, name: str, rid: str, size: str, rounds: int) -> Row:
    def build(backend: str) -> Any:
        def run() -> None:
            out = tmp / f"{name}-{backend}-out"
            shutil.rmtree(out, ignore_errors=True)
            extra = ["--backend", "qnn-ep", "--target", TARGET] if backend == "qnn-ep" else []
            lm(home, "build", "--base", name, "--force", "-o", out, *extra)

        return run

    t = interleave(build("ort"), build("qnn-ep"), rounds, warmup=0)
    return Row.timed(
        rid,
        f"build --backend qnn-ep --target {TARGET}, {size} ({SIM})",
        "build --backend ort (same base and adapters)",
        t,
        note="the qnn-ep build compiles every graph twice (shared and alone) with QNN's HTP compiler",
    )


_SWITCH = r"""
import json, sys, time
import numpy as np
from loramgr.runtime import Plan, qnn
from loramgr.runtime.ort import Htp, LoraSession
from benchmarks.measure import interleave
plan = Plan.load(sys.argv[1]); names = sys.argv[2:4]; rounds = int(sys.argv[4])
s = LoraSession(plan, "decode", htp=Htp("sm8750"))
path = plan.target_graph_file("sm8750", "decode", shared=qnn.simulator_can_load_shared())
soc = plan.target("sm8750")["soc_model"]
feeds = {}
for i in s.session.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    if i.name.endswith("lora_alpha") or ".lora_" in i.name:
        continue
    dt = np.int64 if "int64" in i.type else np.float32
    feeds[i.name] = np.ones(shape, dt) if i.name == "attention_mask" else np.zeros(shape, dt)
state = {"k": 0}
def switch():
    state["k"] ^= 1
    s.apply(names[state["k"]])
    return s.run(feeds)
def new_session():
    n = qnn.session(path, soc)
    ro_feeds = {k: v for k, v in feeds.items() if k in {x.name for x in n.get_inputs()}}
    n.run(None, ro_feeds)
    return n
t = interleave(new_session, switch, rounds, pause=0.02)
print(json.dumps({"baseline": t.baseline, "subject": t.subject}))
"""


def bench_htp(tmp: Path, quick: bool) -> list[Row]:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        print("    htp: onnxruntime-qnn is not installed; no HTP rows", file=sys.stderr)
        return []
    home = tmp / "home-htp"
    small, large = ((64, 2), (128, 2)) if quick else ((256, 4), (512, 8))
    rows: list[Row] = []
    for (hidden, layers), rid in ((small, "htp_compile_s"), (large, "htp_compile_s_large")):
        name = f"h{hidden}"
        _base(tmp, home, hidden, layers, name)
        rows.append(_compile_rows(tmp, home, name, rid, f"Llama hidden {hidden} x {layers} layers", 2 if quick else 3))

    name = f"h{small[0]}"
    out = tmp / f"{name}-qnn-ep-out"
    lm(home, "build", "--base", name, "-o", out, "--backend", "qnn-ep", "--target", TARGET)  # the newest build
    lm(home, "plan", "--base", name, "-o", out / "plan.json")
    plan = json.loads((out / "plan.json").read_text())
    graphs = plan["targets"][TARGET]["graphs"]
    shared = sum({f["path"]: f["size"] for g in graphs.values() for f in g["files"]}.values())
    alone = sum({f["path"]: f["size"] for g in graphs.values() for f in g["unshared_files"]}.values())
    rows.append(
        Row(
            "htp_context_bytes_shared",
            f"weight-shared context, prefill + decode ({SIM} compile)",
            "each graph compiled alone",
            [alone],
            [shared],
            "B",
        )  # fmt: skip
    )

    p = subprocess.run(
        [sys.executable, "-c", _SWITCH, str(out / "plan.json"), f"{name}-ad0", f"{name}-ad1", "5" if quick else "15"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    t = json.loads(p.stdout.strip().splitlines()[-1])
    rows.append(
        Row(
            "htp_switch_vs_new_session",
            f"switch adapter + 1 decode on one HTP session ({SIM})",
            "new HTP session from the compiled context + 1 decode",
            t["baseline"],
            t["subject"],
            "s",
        )  # fmt: skip
    )

    v = json.loads(
        lm(home, "verify", "--plan", out / "plan.json", "--device", "htp", "--target", TARGET, "--json").stdout
    )
    top1 = [r["top1_agreement"] for r in v["adapters"]]
    rows.append(
        Row(
            "htp_fp16_top1_agreement",
            f"top-1 agreement, SoC fp16 logits vs PEFT fp32 ({SIM})",
            "PEFT fp32 itself",
            [1.0] * len(top1),
            top1,
            "",  # fmt: skip
            extra={"rel_error_max": max(r["rel_error"] for r in v["adapters"]), "entries": len(top1)},
        )
    )
    return rows
