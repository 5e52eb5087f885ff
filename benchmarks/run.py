"""loramgr benchmarks: every figure measured against a baseline doing the same work in the same run.

    python benchmarks/run.py [--quick] [--json OUT] [--only ID,ID]

Method (benchmarks/measure.py): A/B trials interleaved after a warm-up of each side, medians with
min/max and the spread of the paired ratios; goal rows carry ``pass``, report rows do not. --quick
uses small sizes (CI, a few minutes) and fails only when a benchmark is broken, never on a missed
goal: goals are judged on a full run (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(ROOT))

from benchmarks.htp import bench_htp  # noqa: E402
from benchmarks.lookups import bench_lookups  # noqa: E402
from benchmarks.measure import Row, interleave, self_timed, table  # noqa: E402
from benchmarks.models import lm  # noqa: E402
from benchmarks.quant import bench_quant  # noqa: E402

#: every row id a full or quick run writes (tests check them; the docs/benchmarks.md table is keyed by them)
ROW_IDS = (
    "register_copy",
    "register_link",
    "switch_cold",
    "switch_cold_first_verify",
    "switch_vs_new_session",
    "switch_warm",
    "super_adapter_bytes",
    "decode_overhead_r16",
    "decode_default",
    "decode_shared_weights",
    "run_rss_over_weights",
    "lookup_p50_10k",
    "plan_lookup_p50",
    "cli_show",
    "rebuild_1_of_100",
    "parity_fp32",
    "int8_cosine",
    "hot_switch_select",
    "decode_use_case_2_vs_1",
    "build_scale",
    "build_scale_disk",
    "small_files_disk",
    "plan_scale_load",
    "plan_scale_lookup_p50",
    "plan_scale_c_open",
    "export_scale_small",
    "export_scale_large",
    "export_real_size",
    "build_base_bytes",
    "run_rss_real_size",
    "run_rss_real_size_unshared",
    "htp_compile_s",
    "htp_compile_s_large",
    "htp_context_bytes_shared",
    "htp_switch_vs_new_session",
    "htp_fp16_top1_agreement",
    "calibrate_aimet_per_adapter_s",
    "w8a16_cosine",
    "w8a8_cosine",
)


# -- register ---------------------------------------------------------------------------------------------------
def bench_register(tmp: Path, size: int, rounds: int) -> list[Row]:
    """``loramgr register`` (a CLI process) against the shell doing the same work; each side's
    cleanup (deleting its copy, its registry) happens outside its timed span."""
    from loramgr.testing.synth import write_large_adapter

    f = write_large_adapter(tmp / "big.safetensors", size)
    os.sync()  # the source's own write-back must not land inside the first trials
    subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # same page-cache state for both

    def shell(copy: bool) -> Any:
        def run() -> float:
            t = time.perf_counter()
            subprocess.run(["sha256sum", str(f)], stdout=subprocess.DEVNULL, check=True)
            if copy:  # the store makes its copy durable (fsync before the rename): so does the baseline
                subprocess.run(["cp", str(f), str(tmp / "copy")], check=True)
                subprocess.run(["sync", str(tmp / "copy")], check=True)
            dt = time.perf_counter() - t
            (tmp / "copy").unlink(missing_ok=True)
            os.sync()  # both sides start the next trial with nothing left to write back
            return dt

        return run

    def register(link: bool) -> Any:
        def run() -> float:
            home = tmp / "home"
            lm(home, "init")
            t = time.perf_counter()
            lm(home, "register", f, "--name", "big", *(["--link"] if link else []))
            dt = time.perf_counter() - t
            shutil.rmtree(home)
            os.sync()
            return dt

        return run

    copy = interleave(shell(True), register(False), rounds, timer=self_timed)
    link = interleave(shell(False), register(True), rounds, timer=self_timed)
    f.unlink()
    mib = size >> 20
    return [
        Row.timed(
            "register_copy", f"register {mib} MiB (copy into the store)", "sha256sum + cp + sync", copy, goal=1.0
        ),
        Row.timed("register_link", f"register {mib} MiB --link", "sha256sum", link, goal=1.2),
    ]


# -- incremental rebuild ----------------------------------------------------------------------------------------
def bench_rebuild(tmp: Path, n: int, d: int, layers: int, rounds: int) -> list[Row]:
    """Library calls. Baseline: the full build of the same adapters (``force``); subject: the build
    after one adapter got a new version; interleaved, a new version per subject trial. Full size is
    the Llama-3.2-1B layer shape (hidden 2048, 16 layers; square projections), rank 16 on q/k/v/o:
    about 17 MiB per adapter, what a real adapter of that model weighs."""
    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.sections.pipeline import build
    from loramgr.testing import synth
    from loramgr.validation import validate

    mods = ("q_proj", "k_proj", "v_proj", "o_proj")
    mps = synth.module_paths(mods, layers=layers)
    synth.write_base(tmp / "rb.onnx", mps, d=d)
    reg = Registry(Settings.resolve(str(tmp / "home-rebuild")))
    reg.register_base([("rb", tmp / "rb.onnx")], name="rb")
    cfg = synth.peft_config(16, 16, list(mods))
    names = []
    for i in range(n):
        a = synth.write_adapter(tmp / "rb" / f"a{i}", synth.adapter_tensors(mps, 16, d=d, seed=i), cfg)
        names.append(reg.register_adapter(a)[0].name)
    validate(reg, names, "rb")
    out = tmp / "rb-out"
    build(reg, "rb", names, out_dir=out, quiet=True)
    version = [0]

    def full() -> float:
        os.sync()  # the other side's writes are on disk before either side's timed span (same state)
        t = time.perf_counter()
        build(reg, "rb", names, out_dir=out, quiet=True, force=True)
        return time.perf_counter() - t

    def one_changed() -> float:
        version[0] += 1
        a = synth.write_adapter(
            tmp / f"rb-v{version[0]}" / "a3", synth.adapter_tensors(mps, 16, d=d, seed=1000 + version[0]), cfg
        )
        validate(reg, [reg.register_adapter(a)[0].ref], "rb")
        os.sync()
        t = time.perf_counter()
        res = build(reg, "rb", names, out_dir=out, quiet=True)
        dt = time.perf_counter() - t
        assert len(res.rebuilt) == 1, res.rebuilt
        return dt

    trials = interleave(full, one_changed, rounds, warmup=0, timer=self_timed)
    reg.close()
    mb = sum(p.stat().st_size for p in (out / "sections").rglob("*.onnx_adapter")) >> 20
    return [
        Row.timed(
            "rebuild_1_of_100",
            f"build with 1 of {n} adapters changed (hidden {d}, {layers} layers, r16 q/k/v/o; {mb} MiB of sections)",
            "full build of the same adapters",
            trials,
            goal=0.05,
        )
    ]


# -- parity ------------------------------------------------------------------------------------------------------
def bench_parity(tmp: Path) -> list[Row]:
    from loramgr.export.tiny import peft_adapter, tiny_llama

    home = tmp / "home-parity"
    tiny_llama().save_pretrained(tmp / "hf-tiny")
    peft_adapter(tiny_llama(), tmp / "pa", seed=4, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    rows = []
    calib = tmp / "calib.jsonl"
    rng = np.random.default_rng(3)
    calib.write_text("".join(json.dumps({"input_ids": rng.integers(1, 128, 8).tolist()}) + "\n" for _ in range(16)))
    logits = {}
    for label, q in (("fp32", None), ("int8", "8")):
        name = f"p{label}"
        lm(
            home,
            "base",
            "export",
            tmp / "hf-tiny",
            "--name",
            name,
            "--target-modules",
            "q_proj,v_proj",
            "--max-rank",
            "16",
            "--graphs",
            "prefill=8",
            "-o",
            tmp / name,
            *(["--quantized-lora", q] if q else []),
        )
        lm(home, "register", tmp / "pa", "--name", "pa")
        lm(home, "validate", "pa", "--base", name)
        if q:
            lm(home, "calibrate", "--base", name, "pa", "--data", calib)
        lm(home, "build", "--base", name, "pa", "-o", tmp / f"out-{label}")
        lm(home, "plan", "--base", name)
        if not q:
            v = json.loads(lm(home, "verify", "--plan", tmp / "out-fp32" / "plan.json", "--json").stdout)
            d = v["adapters"][0]["max_abs_diff"]
            rows.append(
                Row("parity_fp32", "fp32 logits vs PEFT, max abs diff", "tolerance", [1e-4], [d], "abs", 1e-4, True)
            )
        from loramgr.runtime.generate import _run_chain
        from loramgr.runtime.ort import lm_chains

        pre, _ = lm_chains(str(tmp / f"out-{label}" / "plan.json"), "pa")
        logits[label] = np.stack(
            [
                _run_chain(
                    pre,
                    {
                        "input_ids": np.array([json.loads(ln)["input_ids"]]),
                        "attention_mask": np.ones((1, 8), np.int64),
                        "position_ids": np.arange(8)[None],
                    },
                    {},
                )[0]
                for ln in calib.read_text().splitlines()
            ]
        )
    a, b = logits["int8"].reshape(-1, 128).astype(np.float64), logits["fp32"].reshape(-1, 128).astype(np.float64)
    cos = float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    rows.append(
        Row(
            "int8_cosine",
            "int8 sections: min cosine of logits vs the fp32 adapter",
            "goal",
            [0.999],
            [cos],
            "cos",
            0.999,
            absolute=True,
            higher_is_better=True,
        )
    )
    return rows


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from benchmarks.realsize import bench_real_size
    from benchmarks.runtime import bench_switch, bench_use_cases
    from benchmarks.scale import bench_build_scale, bench_export_scale, bench_plan_scale, bench_small_files

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--json", dest="json_out", help="write every figure to this JSON file")
    ap.add_argument("--only", help="comma-separated step names: " + ", ".join(STEPS))
    args = ap.parse_args(argv)
    q = args.quick
    only = set(args.only.split(",")) if args.only else set(STEPS)
    rows: list[Row] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loramgr-bench-") as d:
        tmp = Path(d)
        steps = {
            "register": lambda: bench_register(tmp, (128 if q else 1024) << 20, 3 if q else 5),
            "switch": lambda: bench_switch(tmp, 256 if q else 2048, 2 if q else 4, 16, 5 if q else 15),
            "lookups": lambda: bench_lookups(tmp, 2000 if q else 10_000, 3 if q else 7),
            "rebuild": lambda: bench_rebuild(tmp, 20 if q else 100, 256 if q else 2048, 2 if q else 16, 2 if q else 7),
            "parity": lambda: bench_parity(tmp),
            "use cases": lambda: bench_use_cases(tmp, 256 if q else 1024, 2 if q else 8, 8, 10 if q else 40),
            "scale": lambda: [
                *bench_build_scale(tmp, (5, 10, 20) if q else (10, 100, 1000), 2 if q else 7),
                *bench_small_files(tmp, 20 if q else 1000, 2 if q else 7),
                *bench_plan_scale(tmp, 2000 if q else 100_000, 200 if q else 2000),
                *bench_export_scale(tmp, ((64, 2), (128, 2)) if q else ((256, 4), (1024, 8))),
            ],
            "real size": lambda: bench_real_size(tmp, q),
            "htp": lambda: bench_htp(tmp, q),
            "quant": lambda: bench_quant(tmp, q),
        }
        for label in STEPS:
            if label in only:
                print(f"... {label}", file=sys.stderr, flush=True)
                rows += steps[label]()
    print(table(rows))
    doc = {
        "quick": q,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "rows": [r.to_json() for r in rows],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


STEPS = ("register", "switch", "lookups", "rebuild", "parity", "use cases", "scale", "htp", "quant", "real size")


def machine() -> dict[str, Any]:
    import platform

    import onnxruntime

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


if __name__ == "__main__":
    sys.exit(main())
