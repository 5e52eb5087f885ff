"""The README's demo: the main job end to end on the embedded SQLite default.

It makes a tiny LoRA-ready base and a few PEFT-layout adapters, then drives the real CLI the way a
user would, printing every command before running it. State lives in ``./demo-output`` (recreated
on every run) so the demo never touches ``~/.loramgr``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from loramgr import synth


def sh(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    print(f"\n$ loramgr {' '.join(argv)}", flush=True)
    p = subprocess.run([sys.executable, "-m", "loramgr", *argv], text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"demo step failed with exit {p.returncode}: loramgr {' '.join(argv)}")
    return p


def main() -> None:
    out = Path(os.environ.get("LORAMGR_DEMO_DIR", "demo-output")).absolute()
    shutil.rmtree(out, ignore_errors=True)
    (out / "inputs").mkdir(parents=True)
    os.environ["LORAMGR_HOME"] = str(out / "home")
    os.environ.pop("LORAMGR_DB_URL", None)
    print(f"loramgr demo: state in {out}")

    mps = synth.module_paths()
    inputs = out / "inputs"
    W = synth.write_base(inputs / "prefill.onnx", mps, max_rank=16)
    synth.write_base(inputs / "decode.onnx", mps, max_rank=16)
    adapters = {"chat-r8": (8, 16, 1), "summarize-r4": (4, 8, 2), "code-r16": (16, 16, 3)}
    tensors = {}
    for name, (r, alpha, seed) in adapters.items():
        tensors[name] = synth.adapter_tensors(mps, r, seed=seed)
        synth.write_adapter(inputs / name, tensors[name], synth.peft_config(r, alpha, ["q_proj", "v_proj"]))
    # an adapter this base cannot serve: rank 32 > max rank 16, and it targets k_proj
    synth.write_adapter(inputs / "too-big-r32", synth.adapter_tensors(synth.module_paths(("q_proj", "k_proj")), 32, seed=4),
                        synth.peft_config(32, 32, ["q_proj", "k_proj"]))

    print("\n## 1. register a two-graph base (prefill + decode share attachment points) and the adapters")
    sh("base", "register", "--name", "tiny", "--graph", f"prefill={inputs / 'prefill.onnx'}",
       "--graph", f"decode={inputs / 'decode.onnx'}", "--max-rank", "16")
    for name in [*adapters, "too-big-r32"]:
        sh("register", inputs / name, "--base", "tiny")
    sh("register", inputs / "chat-r8")  # same bytes again: idempotent
    sh("list", "adapters")

    print("\n## 2. validate: one compatible adapter, one incompatible (every problem at once, exit 5)")
    sh("validate", "chat-r8", "--base", "tiny")
    sh("validate", "too-big-r32", "--base", "tiny", check=False)
    for name in ("summarize-r4", "code-r16"):
        sh("validate", name, "--base", "tiny")
    sh("weight-list", "--base", "tiny", "-o", out / "lora_weights.txt")
    print((out / "lora_weights.txt").read_text().rstrip())

    print("\n## 3. build on the ONNX Runtime reference backend, with and without super adapters")
    build_dir = out / "build"
    sh("build", "--base", "tiny", "--backend", "ort", "-o", out / "build-per-graph")
    sh("build", "--base", "tiny", "--backend", "ort", "--share-adapters", "-o", build_dir)
    per_graph = sum(p.stat().st_size for p in (out / "build-per-graph" / "sections").rglob("*.onnx_adapter")
                    if not p.parent.name == "default")
    shared = sum(p.stat().st_size for p in (build_dir / "sections").rglob("*.onnx_adapter")
                 if not p.parent.name == "default")
    print(f"super adapters: {shared} bytes vs {per_graph} bytes per-graph sections "
          f"({100 * (1 - shared / per_graph):.0f}% saved)")

    print("\n## 4. the runtime plan, a device bundle, and adapters switched on one live session")
    sh("plan", "--base", "tiny")
    sh("plan-show", build_dir / "plan.json", "--adapter", "chat-r8")
    sh("bundle", "--plan", build_dir / "plan.json", "-o", out / "tiny-bundle.tar")
    sh("bundle", "check", out / "tiny-bundle.tar")
    run_plan(build_dir / "plan.json", W, tensors, adapters)
    print("\ndemo finished")


def run_plan(plan_path: Path, W: dict, tensors: dict, adapters: dict) -> None:
    import numpy as np

    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    plan = Plan.load(plan_path)
    session = LoraSession(plan, graph="decode")
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    print("\n$ python: LoraSession(plan, graph='decode') -- one ORT session, adapters switched per run")
    for name in ("chat-r8", "code-r16", "default"):
        if name == "default":
            session.reset()
            want = synth.reference(x, W, {}, 1.0)
        else:
            session.apply(name)
            r, alpha, _ = adapters[name]
            want = synth.reference(x, W, tensors[name], alpha / r)
        got = session.run({"x": x})
        diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        print(f"  {name:9s} out0[:4] = {np.array2string(got[0][0, :4], precision=4)}  "
              f"max |diff| vs numpy reference = {diff:.1e}")
        enc = plan.adapter(name).io_encodings()
        print(f"  {'':9s} I/O encodings: {enc or 'none yet (run `loramgr calibrate`, issue #9)'}")


if __name__ == "__main__":
    main()
