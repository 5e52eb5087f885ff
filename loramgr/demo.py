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
    base = out / "inputs" / "tiny_base.onnx"
    synth.write_base(base, mps, max_rank=16)
    adapters = {"chat-r8": (8, 16, 1), "summarize-r4": (4, 8, 2), "code-r16": (16, 16, 3)}
    for name, (r, alpha, seed) in adapters.items():
        synth.write_adapter(out / "inputs" / name, synth.adapter_tensors(mps, r, seed=seed),
                            synth.peft_config(r, alpha, ["q_proj", "v_proj"]))

    sh("base", "register", base, "--name", "tiny", "--max-rank", "16")
    for name in adapters:
        sh("register", out / "inputs" / name)
    sh("register", out / "inputs" / "chat-r8")  # same bytes again: idempotent
    sh("list", "adapters")
    sh("list", "bases")
    print("\ndemo finished")


if __name__ == "__main__":
    main()
