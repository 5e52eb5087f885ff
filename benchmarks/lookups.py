"""Lookups at scale: a registry of 10k adapters with realistic tensor and encoding rows (p50 of a
lookup), a plan of as many (p50 of ``plan.adapter``), and the ``loramgr show`` process against
``python -c pass`` (lazy imports)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Row, interleave
from benchmarks.models import lm


def _plan_doc(n: int) -> dict[str, Any]:
    enc = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.0, "max": 1.0, "scale": 2 / 255}
    enc["offset"] = -128
    sec = {"name": "g", "graphs": ["g"], "path": "s.onnx_adapter", "sha256": "0" * 64, "size": 1, "shared": False}
    graph = {"name": "g", "kind": "single", "path": "g.onnx", "sha256": "0" * 64, "size": 1}
    base = {"name": "b", "version": "1", "precision": "int8", "max_rank": 16, "graphs": [graph]}
    return {
        "schema": "loramgr.plan",
        "schema_version": 1,
        "build_id": 1,
        "backend": "ort",
        "base": base | {"contexts": [{"name": "g", "graphs": ["g"]}]},
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


def _fill_registry(home: Path, n: int, tensors: int, encodings: int) -> None:
    """``n`` adapters with ``tensors`` tensor rows and ``encodings`` encoding rows each, on one base
    (bulk inserts: the benchmark measures lookups, not registration)."""
    from sqlalchemy import insert

    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.registry.models import AdapterRow, AdapterTensorRow, BaseRow, EncodingRow

    reg = Registry(Settings.resolve(str(home)))
    with reg.session(write=True) as s:
        base = BaseRow(name="b", version="1", precision="fp32", max_rank=16, details={})
        s.add(base)
        s.flush()
        s.execute(
            insert(AdapterRow),
            [
                dict(
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
                    tags={},
                )
                for i in range(n)
            ],
        )
        ids = [r[0] for r in s.query(AdapterRow.id).order_by(AdapterRow.id)]
        for chunk in range(0, n, 1000):
            s.execute(
                insert(AdapterTensorRow),
                [
                    dict(
                        adapter_id=a,
                        key=f"base_model.model.model.layers.{k // 2}.self_attn.q_proj.lora_{'AB'[k % 2]}.weight",
                        dtype="F32",
                        shape=[8, 2048],
                        offset_begin=k * 65536,
                        offset_end=(k + 1) * 65536,
                    )
                    for a in ids[chunk : chunk + 1000]
                    for k in range(tensors)
                ],
            )
            s.execute(
                insert(EncodingRow),
                [
                    dict(
                        base_id=base.id,
                        adapter_id=a,
                        owner=a,
                        kind="activation",
                        tensor=f"out{k}",
                        source="bench",
                        entries=[{"bitwidth": 8, "min": -1.0, "max": 1.0, "scale": 2 / 255, "offset": -128}],
                    )
                    for a in ids[chunk : chunk + 1000]
                    for k in range(encodings)
                ],
            )
    reg.close()


def bench_lookups(tmp: Path, n: int, rounds: int) -> list[Row]:
    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.runtime import Plan

    rng = np.random.default_rng(0)
    p = tmp / "big-plan.json"
    p.write_text(json.dumps(_plan_doc(n)))
    t = time.perf_counter()
    plan = Plan.load(p)
    t_load = time.perf_counter() - t
    plan_lat = []
    for i in rng.integers(0, n, 5000):
        t = time.perf_counter()
        plan.adapter(f"ad{i}").io_encodings("out3")
        plan_lat.append(time.perf_counter() - t)

    home = tmp / "home-lookup"
    _fill_registry(home, n, tensors=16, encodings=8)
    reg = Registry(Settings.resolve(str(home)))
    reg.resolve("ad0").to_json(full=True)  # warm: engine, schema check
    reg_lat = []
    for i in rng.integers(0, n, 1000):
        t = time.perf_counter()
        reg.resolve(f"ad{i}").to_json(full=True)  # what `loramgr show` does
        reg_lat.append(time.perf_counter() - t)
    reg.close()
    cli = interleave(
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        lambda: lm(home, "show", f"ad{n // 2}", "--json"),
        rounds,
    )
    return [
        Row(
            "lookup_p50_10k",
            f"registry lookup (`show` through the library), {n} adapters with tensor and encoding rows, p50",
            "goal",
            [1e-3],
            reg_lat,
            "s",
            1e-3,
            absolute=True,
            note=f"p99 {np.percentile(reg_lat, 99) * 1e3:.2f} ms; 16 tensor and 8 encoding rows per adapter",
        ),
        Row(
            "plan_lookup_p50",
            f"runtime I/O-encoding lookup, plan of {n} adapters, p50",
            "goal",
            [1e-3],
            plan_lat,
            "s",
            1e-3,
            absolute=True,
            note=f"p99 {np.percentile(plan_lat, 99) * 1e6:.1f} us; plan load {t_load:.2f} s",
        ),
        Row.timed("cli_show", f"`loramgr show` process, {n} adapters", "python -c pass", cli, goal=10.0),
    ]
