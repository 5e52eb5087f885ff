"""loramgr benchmarks: every figure measured side by side with its natural baseline in the same run,
reported as a ratio (these machines are noisy; absolute times are printed for context only).

    python benchmarks/run.py [--quick] [--json OUT]

--quick uses small sizes (CI, < 3 minutes) and fails only when a benchmark is broken, never on a
missed goal. Rows: name, baseline, loramgr, ratio, goal, pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    name: str
    baseline: str
    baseline_value: float
    loramgr_value: float
    unit: str
    goal: str
    goal_ratio: float  # pass when ratio <= goal_ratio (or >= for "min" goals)
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.loramgr_value / self.baseline_value if self.baseline_value else float("inf")

    @property
    def passed(self) -> bool:
        return self.loramgr_value >= self.goal_ratio if self.higher_is_better else self.ratio <= self.goal_ratio


def best(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best-of-n wall time (the least disturbed run)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def lm(home: Path, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LORAMGR_HOME=str(home))
    env.pop("LORAMGR_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "loramgr", *map(str, args)], env=env, text=True, capture_output=True, check=check
    )


# -- 1. register --------------------------------------------------------------------------------------------
def bench_register(tmp: Path, size: int) -> list[Row]:
    from loramgr.testing.synth import write_large_adapter

    f = write_large_adapter(tmp / "big.safetensors", size)
    subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    def sha() -> None:
        subprocess.run(["sha256sum", str(f)], stdout=subprocess.DEVNULL, check=True)

    def cp() -> None:
        subprocess.run(["cp", str(f), str(tmp / "copy")], check=True)
        (tmp / "copy").unlink()

    def reg(link: bool) -> Callable[[], None]:
        def run() -> None:
            home = tmp / "home"
            shutil.rmtree(home, ignore_errors=True)
            lm(home, "init")
            t = time.perf_counter()
            lm(home, "register", f, "--name", "big", *(["--link"] if link else []))
            run.t = time.perf_counter() - t  # type: ignore[attr-defined]

        return run

    t_sha, t_cp = best(sha), best(cp)
    copies, links = [], []
    for _ in range(3):
        r = reg(False)
        r()
        copies.append(r.t)  # type: ignore[attr-defined]
        r = reg(True)
        r()
        links.append(r.t)  # type: ignore[attr-defined]
    shutil.rmtree(tmp / "home", ignore_errors=True)
    f.unlink()
    mib = size >> 20
    return [
        Row(f"register {mib} MiB (copy into store)", "sha256sum + cp", t_sha + t_cp, min(copies), "s", "<= 1.0x", 1.0),
        Row(f"register {mib} MiB --link", "sha256sum", t_sha, min(links), "s", "<= 1.2x", 1.2),
    ]


# -- models for 2 and 7: a Llama-shaped graph with and without LoRA inputs ----------------------------------
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
    from loramgr.export import export_base

    return export_base(hf, out, targets=targets, max_rank=rank, graphs=graphs, context_len=ctx)


def export_without_lora(hf: Path, out: Path, q: int, past: int) -> Path:
    """The same decode graph with no LoRA branches (the overhead baseline)."""
    import torch
    from transformers import AutoModelForCausalLM

    from loramgr.export import _export_one
    from loramgr.export.model import GraphSpec, num_layers
    from loramgr.export.onnx_io import save_sharing_weights

    model = AutoModelForCausalLM.from_pretrained(
        hf, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    n = num_layers(model, "llama")
    proto = _export_one(model, "llama", GraphSpec("decode", q, past, (0, n), True, True), 1, torch.float32, "float32")
    save_sharing_weights({"plain.onnx": proto}, out, "plain.data")
    return out / "plain.onnx"


def session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def decode_feeds(sess: Any) -> dict[str, np.ndarray]:
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if i.name == "input_ids":
            feeds[i.name] = np.full(shape, 7, np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones(shape, np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.full(shape, shape[-1], np.int64)
        else:
            feeds[i.name] = (np.random.default_rng(1).standard_normal(shape) * 0.1).astype(np.float32)
    return feeds


def lora_setup(tmp: Path, hf: Path, rank: int) -> tuple[Path, Path, list[str]]:
    """Export (prefill + decode), register 2 PEFT adapters, build --share-adapters, plan."""
    from loramgr.testing.synth_hf import peft_adapter

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


def bench_switch_and_overhead(tmp: Path, hidden: int, layers: int, rank: int) -> list[Row]:
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    hf = llama(tmp, hidden, layers)
    home, plan_path, names = lora_setup(tmp, hf, rank)
    plan = Plan.load(plan_path)
    s = LoraSession(plan, graph="decode")
    feeds = decode_feeds(s.session)
    for n in names:  # warm: sections loaded once, then switching is a lookup
        s.apply(n)
        s.run(feeds)
    k = [0]

    def switch() -> None:
        k[0] += 1
        s.apply(names[k[0] % 2])
        s.run(feeds)

    t_switch = statistics.median([best(switch, 1) for _ in range(15)])

    def apply_only() -> None:
        k[0] += 1
        s.apply(names[k[0] % 2])

    t_apply = statistics.median([best(apply_only, 1) for _ in range(201)])  # cached sections: the switch itself

    def cold() -> None:  # first use: read + verify the section file, load it into ORT
        fresh = LoraSession(plan, graph="decode")
        t = time.perf_counter()
        fresh.apply(names[1])
        cold.t = time.perf_counter() - t  # type: ignore[attr-defined]

    cold_times = []
    for _ in range(3):
        plan._verifier._ok.clear()  # re-verify from disk each time
        cold()
        cold_times.append(cold.t)  # type: ignore[attr-defined]
    t_cold = min(cold_times)
    sec = plan.adapter(names[0]).section_for("decode")
    data = np.frombuffer(Path(plan.verified(sec)).read_bytes(), np.uint8)
    t_memcpy = statistics.median([best(lambda: np.copy(data), 1) for _ in range(15)])

    # baseline: a new session whose LoRA inputs carry the adapter as initializers (merged), one run
    graph = plan.graph_file("decode")
    merged = tmp / "merged"
    import onnx

    from loramgr.sections.backends.ort import read_section

    m = onnx.load(str(graph))
    params = read_section(plan.verified(sec))[2]
    from onnx import numpy_helper

    for t in m.graph.initializer:
        if t.name in params:
            t.CopyFrom(numpy_helper.from_array(params[t.name], t.name))
    keep = {i.name for i in m.graph.input if i.name not in params}
    inputs = [i for i in m.graph.input if i.name in keep]
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    merged.mkdir()
    onnx.save(m, str(merged / "merged.onnx"), save_as_external_data=True, location="merged.data")

    def new_session() -> None:
        ns = session(merged / "merged.onnx")
        ns.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in ns.get_inputs()}})

    t_new = best(new_session, 3)

    # 7. overhead of LoRA branches on a decode step vs the same model without them
    plain = export_without_lora(hf, tmp / "plain", 1, 63)
    ps = session(plain)
    pfeeds = {k: v for k, v in feeds.items() if k in {i.name for i in ps.get_inputs()}}
    s.apply(names[0])
    ro_feeds = dict(feeds)
    t_plain = statistics.median([best(lambda: ps.run(None, pfeeds), 1) for _ in range(30)])
    t_lora = statistics.median([best(lambda: s.run(ro_feeds), 1) for _ in range(30)])

    # 3. super adapter bytes
    shared = sum(p.stat().st_size for p in (tmp / "out" / "sections").glob("ad*/*.onnx_adapter"))
    per_graph = sum(p.stat().st_size for p in (tmp / "out-per-graph" / "sections").glob("ad*/*.onnx_adapter"))

    # 8. PEFT: load_adapter + set_adapter switching on the same model, then one forward
    t_peft = bench_peft_switch(tmp, hf)
    shape = f"hidden {hidden}, {layers} layers, rank {rank}, q/k/v/o"
    return [
        Row(
            f"adapter switch (apply + 1 decode run; {shape})",
            "new ORT session, adapter merged",
            t_new,
            t_switch,
            "s",
            "<= 0.05x",
            0.05,
        ),
        Row(
            f"adapter switch, apply() of a loaded section ({data.nbytes >> 10} KiB)",
            "np.copy of the section bytes",
            t_memcpy,
            t_apply,
            "s",
            "<= 3x",
            3.0,
            note="the run then binds the section's OrtValues by reference: nothing is copied",
        ),
        Row(
            f"first apply() of a section (read + sha256 + load, {data.nbytes >> 10} KiB)",
            "np.copy of the section bytes",
            t_memcpy,
            t_cold,
            "s",
            "report",
            float("inf"),
        ),
        Row("super adapter bytes (2-graph base)", "per-graph sections", per_graph, shared, "bytes", "<= 0.51x", 0.51),
        Row(
            f"decode step with adapter applied ({shape})",
            "same model exported without LoRA",
            t_plain,
            t_lora,
            "s",
            "<= 1.10x",
            1.10,
        ),
        Row(
            "adapter switch (apply + 1 decode run)",
            "PEFT set_adapter + 1 forward (same model, torch)",
            t_peft,
            t_switch,
            "s",
            "<= 1.0x",
            1.0,
        ),
    ]


def interleaved(a: Callable[[], Any], b: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Median wall times of ``a`` and ``b`` run alternately (a, b, a, b, ...) after one warm-up each."""
    a()
    b()
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb))


def bench_use_cases(tmp: Path, hidden: int, layers: int, rank: int, rounds: int) -> list[Row]:
    """Hot switch (``select`` inside an applied use case) against applying another adapter's section,
    both on one live decode session and each followed by one decode run; and the decode step of a
    two-adapter use case against one adapter, on the same graph (alpha slots)."""
    from transformers import AutoModelForCausalLM

    from loramgr.export import export_base
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession
    from loramgr.testing.synth_hf import peft_adapter

    hf = llama(tmp, hidden, layers)
    home = tmp / "home-uc"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    man = export_base(
        hf,
        tmp / "onnx-uc",
        targets=targets,
        max_rank=3 * rank,
        graphs="prefill=16,decode=1",
        context_len=64,
        max_adapters=3,
    )
    args = [a for g in man["graphs"] for a in ("--graph", f"{g['name']}={tmp / 'onnx-uc' / g['file']}")]
    lm(home, "base", "register", "--name", "uc", *args)
    names = []
    for i in range(3):
        m = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
        peft_adapter(m, tmp / f"uc{i}", seed=10 + i, r=rank, lora_alpha=rank, target_modules=targets)
        lm(home, "register", tmp / f"uc{i}", "--name", f"uc{i}")
        lm(home, "validate", f"uc{i}", "--base", "uc")
        names.append(f"uc{i}")
    lm(home, "usecase", "create", "hot", "--base", "uc", "--hot", *names)
    lm(home, "usecase", "create", "pair", "--base", "uc", names[0], names[1])
    lm(home, "build", "--base", "uc", "--share-adapters", "-o", tmp / "out-uc")
    lm(home, "plan", "--base", "uc")
    plan = Plan.load(tmp / "out-uc" / "plan.json")
    hot, apply_s, one = (
        LoraSession(plan, graph="decode"),
        LoraSession(plan, graph="decode"),
        LoraSession(plan, graph="decode"),
    )
    feeds = decode_feeds(hot.session)
    hot.apply("hot")
    for n in names[:2]:
        apply_s.apply(n)  # both sections loaded: the apply compared is the warm one
    turn = [0]

    def by_select() -> None:
        turn[0] ^= 1
        hot.select(names[turn[0]])
        hot.run(feeds)

    def by_apply() -> None:
        apply_s.apply(names[turn[0]])
        apply_s.run(feeds)

    t_select, t_apply = interleaved(by_select, by_apply, rounds)
    pair = LoraSession(plan, graph="decode")
    pair.apply("pair")
    one.apply(names[0])
    t_pair, t_one = interleaved(lambda: pair.run(feeds), lambda: one.run(feeds), rounds)
    shape = f"hidden {hidden}, {layers} layers, rank {rank} each, R {3 * rank}, 3 slots"
    return [
        Row(
            f"hot switch: select + 1 decode run ({shape})",
            "apply a loaded section + 1 decode run",
            t_apply,
            t_select,
            "s",
            "report",
            float("inf"),
            note="hot_switch_select; both on a live session",
        ),
        Row(
            f"decode step, 2-adapter use case ({shape})",
            "1 adapter on the same graph",
            t_one,
            t_pair,
            "s",
            "report",
            float("inf"),
            note="decode_use_case_2_vs_1",
        ),
    ]


def bench_peft_switch(tmp: Path, hf: Path) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True).eval()
    pm = PeftModel.from_pretrained(model, str(tmp / "ad0"), adapter_name="ad0")
    pm.load_adapter(str(tmp / "ad1"), adapter_name="ad1")
    ids = torch.tensor([[7]])
    k = [0]

    def switch() -> None:
        k[0] += 1
        pm.set_adapter(f"ad{k[0] % 2}")
        with torch.no_grad():
            pm(input_ids=ids)

    switch()
    return statistics.median([best(switch, 1) for _ in range(15)])


# -- 4. lookups at scale ---------------------------------------------------------------------------------------
def bench_lookups(tmp: Path, n: int) -> list[Row]:
    from loramgr.runtime import Plan

    enc = {
        "bitwidth": 8,
        "dtype": "int",
        "is_symmetric": "False",
        "min": -1.0,
        "max": 1.0,
        "scale": 2 / 255,
        "offset": -128,
    }
    sec = {"name": "g", "graphs": ["g"], "path": "s.onnx_adapter", "sha256": "0" * 64, "size": 1, "shared": False}
    doc = {
        "schema": "loramgr.plan",
        "schema_version": 1,
        "build_id": 1,
        "backend": "ort",
        "base": {
            "name": "b",
            "version": "1",
            "precision": "int8",
            "max_rank": 16,
            "graphs": [{"name": "g", "kind": "single", "path": "g.onnx", "sha256": "0" * 64, "size": 1}],
            "contexts": [{"name": "g", "graphs": ["g"]}],
        },
        "alpha": {"tensor": "lora_alpha", "default": 1.0, "reset_value": 0.0},
        "rules": {},
        "adapters": [
            {
                "name": f"ad{i}",
                "version": "1",
                "ref": f"ad{i}@1",
                "sha256": "0" * 64,
                "rank": 8,
                "lora_alpha": 16,
                "recommended_alpha": 1.0,
                "sections": [sec],
                "io_encodings": {f"out{j}": [enc] for j in range(8)},
                "weight_encodings": {},
                "steps": [],
            }
            for i in range(n)
        ],
        "default_adapter": {"sections": [sec], "io_encodings": {}, "steps": []},
        "reset_steps": {},
    }
    p = tmp / "big-plan.json"
    p.write_text(json.dumps(doc))
    t = time.perf_counter()
    plan = Plan.load(p)
    t_load = time.perf_counter() - t
    rng = np.random.default_rng(0)
    lat = []
    for i in rng.integers(0, n, 5000):
        t = time.perf_counter()
        plan.adapter(f"ad{i}").io_encodings("out3")
        lat.append(time.perf_counter() - t)
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    # registry: `show` on n rows (bulk-inserted), through the library API and one CLI process
    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.registry.models import AdapterRow

    home = tmp / "home-lookup"
    reg = Registry(Settings.resolve(str(home)))
    with reg.session(write=True) as s:
        s.add_all(
            [
                AdapterRow(
                    name=f"ad{i}",
                    version="1",
                    version_num=1,
                    sha256=f"{i:064x}",
                    config_sha256="0" * 64,
                    size=1,
                    source_uri="bench",
                    dtype="F32",
                    rank=8,
                    alpha=16.0,
                )
                for i in range(n)
            ]
        )
    reg_lat = []
    for i in rng.integers(0, n, 500):
        t = time.perf_counter()
        reg.resolve(f"ad{i}")
        reg_lat.append(time.perf_counter() - t)
    reg.close()
    t = time.perf_counter()
    lm(home, "show", f"ad{n // 2}", "--json")
    t_cli = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    t_py = time.perf_counter() - t
    return [
        Row(
            f"runtime I/O-encoding lookup, plan of {n} adapters (p50)",
            "1 ms goal",
            1e-3,
            float(p50),
            "s",
            "p50 < 1 ms",
            1.0,
            note=f"p99 {p99 * 1e6:.1f} us; plan load {t_load:.2f} s",
        ),
        Row(
            f"registry show, {n} adapter rows (library p50)",
            "1 ms",
            1e-3,
            float(np.percentile(reg_lat, 50)),
            "s",
            "report",
            float("inf"),
            note=f"p99 {np.percentile(reg_lat, 99) * 1e3:.2f} ms",
        ),
        Row(f"`loramgr show` CLI process, {n} rows", "python -c pass", t_py, t_cli, "s", "report", float("inf")),
    ]


# -- 5. incremental rebuild --------------------------------------------------------------------------------------
def bench_rebuild(tmp: Path, n: int, d: int, layers: int) -> list[Row]:
    """Library calls (the CLI adds a constant interpreter start-up, reported separately)."""
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
    refs = []
    for i in range(n):
        a = synth.write_adapter(
            tmp / "rb" / f"a{i}", synth.adapter_tensors(mps, 16, d=d, seed=i), synth.peft_config(16, 16, list(mods))
        )
        refs.append(reg.register_adapter(a)[0].ref)
    validate(reg, refs, "rb")
    t = time.perf_counter()
    build(reg, "rb", refs, out_dir=tmp / "rb-out", quiet=True)
    t_full = time.perf_counter() - t
    a = synth.write_adapter(
        tmp / "rb2" / "a3", synth.adapter_tensors(mps, 16, d=d, seed=999), synth.peft_config(16, 16, list(mods))
    )
    new = reg.register_adapter(a)[0].ref
    validate(reg, [new], "rb")
    t = time.perf_counter()
    res = build(reg, "rb", [r.split("@")[0] for r in refs], out_dir=tmp / "rb-out", quiet=True)
    t_inc = time.perf_counter() - t
    reg.close()
    mb = sum(p.stat().st_size for p in (tmp / "rb-out" / "sections").rglob("*.onnx_adapter")) >> 20
    return [
        Row(
            f"rebuild with 1 of {n} adapters changed ({mb} MiB of sections)",
            "full build",
            t_full,
            t_inc,
            "s",
            "<= 0.05x",
            0.05,
            note=f"rebuilt {res.rebuilt}",
        )
    ]


# -- 6. parity ------------------------------------------------------------------------------------------------------
def bench_parity(tmp: Path) -> list[Row]:
    from loramgr.testing.synth_hf import peft_adapter, tiny_llama

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
            rows.append(
                Row(
                    "fp32 parity vs PEFT (max abs diff of logits)",
                    "tolerance 1e-4",
                    1e-4,
                    v["adapters"][0]["max_abs_diff"],
                    "abs",
                    "<= 1e-4",
                    1.0,
                )
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
            "int8 sections: min cosine of logits vs fp32 adapter",
            "goal 0.999",
            0.999,
            cos,
            "cos",
            ">= 0.999",
            0.999,
            higher_is_better=True,
        )
    )
    return rows


# -- main -------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI)")
    ap.add_argument("--json", dest="json_out", help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    q = args.quick
    rows: list[Row] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loramgr-bench-") as d:
        tmp = Path(d)
        steps = [
            ("register", lambda: bench_register(tmp, (128 if q else 1024) << 20)),
            ("switch", lambda: bench_switch_and_overhead(tmp, 256 if q else 1024, 2 if q else 8, 16)),
            ("lookups", lambda: bench_lookups(tmp, 2000 if q else 10_000)),
            ("rebuild", lambda: bench_rebuild(tmp, 20 if q else 100, 256 if q else 1024, 2 if q else 8)),
            ("parity", lambda: bench_parity(tmp)),
            ("use cases", lambda: bench_use_cases(tmp, 256 if q else 1024, 2 if q else 8, 8, 10 if q else 60)),
        ]
        for label, fn in steps:
            print(f"... {label}", file=sys.stderr, flush=True)
            rows += fn()
    print_table(rows)
    out = {
        "quick": q,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "rows": [asdict(r) | {"ratio": r.ratio, "pass": r.passed} for r in rows],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def machine() -> dict[str, Any]:
    import platform

    import onnxruntime

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "bytes":
        return f"{v / 1024:.0f} KiB"
    return f"{v:.3g}"


def print_table(rows: list[Row]) -> None:
    head = ["benchmark", "baseline", "baseline", "loramgr", "ratio", "goal", "pass"]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        lines.append(
            [
                r.name,
                r.baseline,
                fmt(r.baseline_value, r.unit),
                fmt(r.loramgr_value, r.unit),
                "-" if r.goal == "report" else f"{r.ratio:.3f}x",
                r.goal,
                "-" if r.goal == "report" else ("yes" if r.passed else "NO"),
            ]
        )
    for ln in lines:
        print("| " + " | ".join(ln) + " |")
    for r in rows:
        if r.note:
            print(f"- {r.name}: {r.note}")


if __name__ == "__main__":
    sys.exit(main())
