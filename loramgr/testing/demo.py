"""The README's demo: the main job end to end on the embedded SQLite default.

It makes a tiny Hugging Face Llama and PEFT adapters for it, exports the model to LoRA-ready ONNX
graphs with ``loramgr base export``, then drives the real CLI the way a user would, printing every
command before running it. State lives in ``./demo-output`` (recreated on every run) so the demo
never touches ``~/.loramgr``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from loramgr.runtime import Plan

#: the calibration set the demo ships (package data, so it is there in an installed wheel too)
CALIBRATION_SET = Path(__file__).parent / "data" / "demo_calib.jsonl"


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

    inputs = out / "inputs"
    print("\n## 0. a tiny Hugging Face Llama (hidden 64, 2 layers) and PEFT adapters for it, made locally")
    from loramgr.export.tiny import peft_adapter, tiny_llama

    tiny_llama().save_pretrained(inputs / "hf")
    adapters = {"chat-r8": (8, 16, 1), "summarize-r4": (4, 8, 2), "code-r16": (16, 16, 3)}
    for name, (r, alpha, seed) in adapters.items():
        peft_adapter(tiny_llama(), inputs / name, seed=seed, r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"])
    # an adapter this base cannot serve: rank 32 > max rank 16, and it targets k_proj
    peft_adapter(tiny_llama(), inputs / "too-big-r32", seed=4, r=32, lora_alpha=32, target_modules=["q_proj", "k_proj"])

    print(
        "\n## 1. export the HF model to LoRA-ready prefill + decode ONNX graphs (registered as base `tiny`),"
        "\n##    with two alpha slots so two adapters can be active at once"
    )
    sh(
        "base",
        "export",
        inputs / "hf",
        "--name",
        "tiny",
        "--target-modules",
        "q_proj,v_proj",
        "--max-rank",
        "16",
        "--graphs",
        "prefill=16,decode=1",
        "--context-len",
        "64",
        "--max-adapters",
        "2",
        "-o",
        inputs / "onnx",
    )
    for name in [*adapters, "too-big-r32"]:
        sh("register", inputs / name, "--base", "tiny")
    sh("register", inputs / "chat-r8")  # same bytes again: idempotent
    sh("list", "adapters")

    print("\n## 2. validate: compatible adapters, and one incompatible (every problem at once, exit 5)")
    sh("validate", "chat-r8", "--base", "tiny")
    sh("validate", "too-big-r32", "--base", "tiny", check=False)
    for name in ("summarize-r4", "code-r16"):
        sh("validate", name, "--base", "tiny")
    sh("weight-list", "--base", "tiny", "-o", out / "lora_weights.txt")
    print((out / "lora_weights.txt").read_text().rstrip())

    print("\n## 3. a use case: chat-r8 and summarize-r4 active together (ranks 8 + 4 <= 16), alphas 1 and 0.5")
    sh("usecase", "create", "assistant", "chat-r8", "summarize-r4", "--base", "tiny", "--alphas", "1,0.5")
    sh("usecase", "create", "too-much", "chat-r8", "code-r16", "--base", "tiny", check=False)  # 8 + 16 > 16: exit 5
    sh("usecase", "list", "--base", "tiny")

    print("\n## 3b. calibrate per-adapter and per-use-case I/O encodings on the bundled calibration set")
    sh("calibrate", "--base", "tiny", "--all", "--data", CALIBRATION_SET)
    sh("encodings", "show", "chat-r8", "--tensor", "logits")

    print("\n## 4. build on the ONNX Runtime reference backend, with and without super adapters")
    build_dir = out / "build"
    sh("build", "--base", "tiny", "--backend", "ort", "-o", out / "build-per-graph")
    sh("build", "--base", "tiny", "--backend", "ort", "--share-adapters", "-o", build_dir)
    per_graph = sum(
        p.stat().st_size
        for p in (out / "build-per-graph" / "sections").rglob("*.onnx_adapter")
        if not p.parent.name == "default"
    )
    shared = sum(
        p.stat().st_size for p in (build_dir / "sections").rglob("*.onnx_adapter") if not p.parent.name == "default"
    )
    print(
        f"super adapters: {shared} bytes vs {per_graph} bytes per-graph sections "
        f"({100 * (1 - shared / per_graph):.0f}% saved)"
    )

    print("\n## 5. the runtime plan, a device bundle, then adapters run through the plan")
    plan = build_dir / "plan.json"
    sh("plan", "--base", "tiny")
    sh("plan-show", plan, "--adapter", "chat-r8")
    sh("bundle", "--plan", plan, "-o", out / "tiny-bundle.tar")
    sh("bundle", "check", out / "tiny-bundle.tar")
    for name in ("chat-r8", "code-r16", "default"):
        sh("run", "--plan", plan, "--adapter", name, "--input-ids", "5,17,99,3", "--steps", "8")
    sh("plan-show", plan, "--use-case", "assistant")
    sh("run", "--plan", plan, "--use-case", "assistant", "--input-ids", "5,17,99,3", "--steps", "8")
    sh(
        "run",
        "--plan",
        plan,
        "--use-case",
        "assistant",
        "--alpha",
        "chat-r8=0.25,summarize-r4=1",
        "--input-ids",
        "5,17,99,3",
    )
    sh("verify", "--plan", plan)  # every adapter and the use case against PEFT
    run_plan(plan)
    tool = c_runtime(plan, out)
    groups_v3(inputs, out, tool)
    htp(out)
    print("\ndemo finished")


def htp(out: Path) -> None:
    """Qualcomm's HTP backend (the [qnn] extra): the demo base compiled for the Snapdragon 8 Elite,
    two adapters and the use case verified on it, adapters switched on one session. On x86 this is
    Qualcomm's simulator of the SoC: its numerics, not its speed."""
    print("\n## 8. Qualcomm HTP (x86 simulation): compile the base for sm8750, verify and switch adapters on it")
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        print("  skipped: needs onnxruntime-qnn (pip install 'loramgr[qnn]'; x86_64 and Windows on Snapdragon)")
        return
    sh("target", "list")
    target_dir = out / "build-htp"
    sh("build", "--base", "tiny", "--backend", "qnn-ep", "--target", "sm8750", "-o", target_dir)
    sh("plan", "--base", "tiny")
    plan = target_dir / "plan.json"
    sh("plan-show", plan)
    sh("verify", "--plan", plan, "--device", "htp", "--target", "sm8750", "--adapter", "chat-r8",
       "--adapter", "summarize-r4", "--adapter", "assistant")  # fmt: skip
    sh("run", "--plan", plan, "--adapter", "chat-r8", "--input-ids", "5,17,99,3", "--steps", "8",
       "--device", "htp", "--target", "sm8750")  # fmt: skip
    import numpy as np

    from loramgr.runtime.ort import Htp, LoraSession

    p = Plan.load(plan)
    s = LoraSession(p, "prefill", htp=Htp("sm8750"))
    n = int(p.graphs["prefill"]["inputs"]["input_ids"]["shape"][1])
    feeds = {
        "input_ids": (np.arange(n, dtype=np.int64)[None] * 7 + 3) % 128,
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
    }
    print("one HTP session, adapters switched per run (no new session, no recompile):")
    s.apply("default")
    base = s.run(feeds)[0]
    for name in ("chat-r8", "code-r16", "assistant", "default"):
        s.apply(name)
        logits = s.run(feeds)[0]
        print(
            f"  {name:<14} last-position top token {int(logits[0, -1].argmax()):4d}, "
            f"max |logits - base| {float(np.abs(logits - base).max()):.4f}"
        )


def c_runtime(plan: Path, out: Path) -> str | None:
    """The same plan through the C library's command-line tool (runtime-c/), as device code reads it."""
    print("\n## 6. the plan on the device: runtime-c's `loramgr-plan` (C99 + cJSON) reads the same plan")
    src = Path(__file__).resolve().parents[2] / "runtime-c"
    if not src.is_dir() or shutil.which("cmake") is None or not Path("/usr/include/cjson/cJSON.h").exists():
        print("  skipped: needs the source tree's runtime-c/, cmake and libcjson-dev (scripts/demo.sh installs them)")
        return None
    build = out / "runtime-c-build"
    for cmd in (
        ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j", "2", "--target", "loramgr-plan"],
    ):
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    tool = str(build / "loramgr-plan")
    for args in (
        ["adapters", plan],
        ["encoding", plan, "chat-r8", "logits"],
        ["sections", plan, "chat-r8", "decode"],
        ["steps", plan, "assistant"],
    ):
        print("$ loramgr-plan " + " ".join(str(a) for a in args))
        p = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
        print(p.stdout.rstrip() or p.stderr.rstrip())
    return tool


def groups_v3(inputs: Path, out: Path, tool: str | None) -> None:
    """QNN LoRA v3 grouped LoRA on the ort backend: integer LoRA inputs, use cases sharing scales."""
    print(
        "\n## 7. QNN LoRA v3 groups on the ort backend: the base again with int8 LoRA inputs; use cases"
        "\n##    `assistant` and `coder` share one quantization section, so switching between them applies"
        "\n##    only the weights section (the plan's steps say when the group's section applies)"
    )
    sh(
        "base",
        "export",
        inputs / "hf",
        "--name",
        "tiny-int8",
        "--target-modules",
        "q_proj,v_proj",
        "--max-rank",
        "16",
        "--graphs",
        "prefill=16",
        "--context-len",
        "64",
        "--max-adapters",
        "2",
        "--quantized-lora",
        "8",
        "-o",
        inputs / "onnx-int8",
    )
    for name in ("chat-r8", "summarize-r4", "code-r16"):
        sh("validate", name, "--base", "tiny-int8")
    sh("usecase", "create", "assistant", "chat-r8", "summarize-r4", "--base", "tiny-int8", "--alphas", "1,0.5")
    sh("usecase", "create", "coder", "code-r16", "--base", "tiny-int8")
    sh("group", "create", "int8-group", "assistant", "coder", "--base", "tiny-int8")
    sh("build", "--base", "tiny-int8", "-o", out / "build-int8")
    plan = out / "build-int8" / "plan.json"
    sh("plan", "--base", "tiny-int8")
    sh("plan-show", plan, "--use-case", "assistant")
    sh("run", "--plan", plan, "--use-case", "coder", "--input-ids", "5,17,99,3", "--steps", "8")
    if tool:
        for args in (["switch", plan, "assistant"], ["switch", plan, "assistant", "coder"]):
            print("$ loramgr-plan " + " ".join(str(a) for a in args))
            p = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
            applied = [a["path"].rsplit("/", 2)[-2] + "/" + a["name"] for a in json.loads(p.stdout)["applied"]]
            print(f"  applies {', '.join(applied)}" if p.returncode == 0 else p.stderr.rstrip())


def run_plan(plan_path: Path) -> None:
    """The Python runtime API: one live session per graph, adapters switched without reloading."""
    import numpy as np

    from loramgr.runtime.ort import LoraSession

    plan = Plan.load(plan_path)
    session = LoraSession(plan, graph="prefill")
    ids = np.array([[5, 17, 99, 3] + [0] * 12], np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": (ids > 0).astype(np.int64) | (np.arange(16) < 4),
        "position_ids": np.arange(16, dtype=np.int64)[None],
    }
    print("\n$ python: LoraSession(plan, graph='prefill') -- one ORT session, adapters switched per run")
    for name in ("chat-r8", "code-r16", "default"):
        session.apply(name)
        logits = session.run(feeds, ["logits"])[0]
        print(f"  {name:9s} next-token logits[:4] = {np.array2string(logits[0, 3, :4], precision=4)}")
        enc = plan.adapter(name).io_encodings("logits")
        print(
            f"  {'':9s} I/O encoding of logits: "
            + (
                f"min {enc['min']:.4f} max {enc['max']:.4f} scale {enc['scale']:.6f} offset {enc['offset']}"
                if enc
                else "none"
            )
        )

    print("\n$ python: session.apply('assistant'), then set_alpha per adapter and select (hot switch by alpha)")
    session.apply("assistant")
    for label, change in (
        ("alphas [1, 0.5]", lambda: None),
        ("set_alpha(0.25, 'chat-r8')", lambda: session.set_alpha(0.25, "chat-r8")),
        ("select('summarize-r4')", lambda: session.select("summarize-r4")),
    ):
        change()
        logits = session.run(feeds, ["logits"])[0]
        print(f"  {label:28s} alphas {session.alphas} logits[:4] = {np.array2string(logits[0, 3, :4], precision=4)}")


if __name__ == "__main__":
    main()
