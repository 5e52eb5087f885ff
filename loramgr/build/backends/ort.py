"""ONNX Runtime reference backend: a section is an ``.onnx_adapter`` file (``ort.AdapterFormat``)
holding the adapter's LoRA graph inputs for one graph, or with super adapters for every graph of a
group that shares attachment-point names. ``model_version`` is derived from the base's fingerprint and
``adapter_version`` from the adapter's version, so a section built for another base is detectable.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from typing import Any

from loramgr.build.backends import OutFile, SectionJob


def model_version(base: dict[str, Any]) -> int:
    """A 31-bit integer identifying the base's exact graphs (AdapterFormat stores an int)."""
    return int(base["fingerprint"][:7], 16)


def adapter_version(adapter: dict[str, Any] | None) -> int:
    if adapter is None:
        return 0
    v = str(adapter["version"])
    return int(v) if v.isdigit() and int(v) < 2**31 else int(adapter["id"])


def write_section(path: Path, params: dict[str, Any], a_version: int, m_version: int) -> None:
    import onnxruntime as ort

    af = ort.AdapterFormat()
    af.set_adapter_version(a_version)
    af.set_model_version(m_version)
    af.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    af.export_adapter(str(path))


def read_section(path: str | Path) -> tuple[int, int, dict[str, Any]]:
    """(adapter_version, model_version, parameters as numpy) of an ``.onnx_adapter`` file."""
    import onnxruntime as ort

    af = ort.AdapterFormat.read_adapter(str(path))
    # copy: the arrays would otherwise view memory owned by ``af``, freed when it goes away
    params = {k: np.array(v.numpy(), copy=True) for k, v in af.get_parameters().items()}
    return af.get_adapter_version(), af.get_model_version(), params


def _build_one(base: dict[str, Any], job: SectionJob, work: str) -> list[OutFile]:
    from loramgr.build.inputs import section_inputs
    from loramgr.store import sha256_file

    inputs = section_inputs(job.adapter, base)
    by_graph = {g: {ap["tensor_a"] for ap in base["attachment_point_list"] if g in ap["graphs"]} |
                {ap["tensor_b"] for ap in base["attachment_point_list"] if g in ap["graphs"]}
                for g in base["graphs"]}
    folder = "default" if job.adapter is None else job.adapter["name"] + "@" + job.adapter["version"]
    out = []
    for section, graphs in job.groups.items():
        names = set().union(*(by_graph[g] for g in graphs))
        names |= {k for k in inputs if k.endswith("_scale") and k[: -len("_scale")] in names}
        rel = f"sections/{folder}/{section}.onnx_adapter"
        p = Path(work) / rel
        write_section(p, {k: inputs[k] for k in sorted(names)}, adapter_version(job.adapter), model_version(base))
        out.append(OutFile(rel, job.kind, list(graphs), job.adapter["id"] if job.adapter else None,
                           job.adapter["name"] if job.adapter else None, job.cache_key, sha256_file(p),
                           p.stat().st_size))
    return out


class OrtBackend:
    name = "ort"

    def version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime-{ort.__version__}"

    def build(self, base: dict[str, Any], jobs: list[SectionJob], work: Path, *, n_jobs: int,
              progress: Any) -> list[OutFile]:
        files: list[OutFile] = []
        delay = float(os.environ.get("LORAMGR_TEST_SLOW_BUILD", "0") or 0)  # fault-injection tests only
        if n_jobs <= 1 or len(jobs) <= 1:
            for job in jobs:
                files += _build_one(base, job, str(work))
                progress(job)
                if delay:
                    time.sleep(delay)
            return files
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = [(job, ex.submit(_build_one, base, job, str(work))) for job in jobs]
            for job, fut in futs:
                files += fut.result()
                progress(job)
        return files
