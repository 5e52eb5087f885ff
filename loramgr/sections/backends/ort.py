"""ONNX Runtime reference backend: a section is an ``.onnx_adapter`` file (``ort.AdapterFormat``)
holding the adapter's LoRA graph inputs for one graph, or with super adapters for every graph of a
group that shares attachment-point names. ``model_version`` is derived from the base's fingerprint and
``adapter_version`` from the adapter's version, so a section built for another base is detectable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from loramgr.infra.store import sha256_file
from loramgr.lora.inputs import group_encodings, grouped_inputs, section_inputs, use_case_inputs
from loramgr.records import Adapter, Base, SectionKind
from loramgr.sections.backends import BuildContext, OutFile, Progress, SectionJob


def model_version(fingerprint: str | None) -> int:
    """A 31-bit integer identifying a base's exact graphs, from its fingerprint (AdapterFormat stores an int)."""
    return int((fingerprint or "0")[:7], 16)


def adapter_version(adapter: Adapter | None) -> int:
    if adapter is None:
        return 0
    v = adapter.version
    return int(v) if v.isdigit() and int(v) < 2**31 else adapter.id


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


def _build_one(base: Base, job: SectionJob, work: str) -> list[OutFile]:
    scales = True  # a section carries the LoRA inputs' scales, except a grouped use case's
    if job.group is not None:  # grouped: the members' integer codes, or the group's scales alone
        members = list(job.members) or list(job.group_members[0])
        weights, quant = grouped_inputs(members, base, job.encodings)  # the group's, set by OrtBackend.build
        inputs, scales = (weights, False) if job.use_case is not None else (quant, True)
        folder = f"usecases/{job.use_case.name}" if job.use_case is not None else f"groups/{job.group}"
    elif job.use_case is not None:
        inputs = use_case_inputs(list(job.members), base, job.encodings)
        folder = f"usecases/{job.use_case.name}"
    else:
        inputs = section_inputs(job.adapter, base, job.encodings)
        folder = "default" if job.adapter is None else job.adapter.ref
    by_graph = {g: {n for ap in base.points_of(g) for n in ap.updatable} for g in base.graph_names}
    out = []
    for section, graphs in job.groups.items():
        names = set().union(*(by_graph[g] for g in graphs))
        if scales:
            names |= {k for k in inputs if k.endswith("_scale") and k[: -len("_scale")] in names}
        if job.kind is SectionKind.GROUP_QUANT:
            names = {k for k in names if k.endswith("_scale")}
        names &= set(inputs)
        rel = f"sections/{folder}/{section}.onnx_adapter"
        # staged flat in the work directory: a directory per section cost a mkdir and an rmdir each,
        # about a quarter of a 1000-adapter build on ext4 (their cost per call grows with the count)
        staged = hashlib.sha256(rel.encode()).hexdigest()[:32] + ".onnx_adapter"
        p = Path(work) / staged
        write_section(
            p, {k: inputs[k] for k in sorted(names)}, adapter_version(job.adapter), model_version(base.fingerprint)
        )
        out.append(job.out_file(rel, list(graphs), sha256=sha256_file(p), size=p.stat().st_size, staged=staged))
    return out


def _with_group_encodings(base: Base, jobs: list[SectionJob]) -> list[SectionJob]:
    """The grouped jobs carry their group's shared encodings, computed once per group for the whole
    build (every member's section and the group's quantization section depend on all members)."""
    members = {j.group: j.group_members for j in jobs if j.group is not None}  # one entry per group
    encs = {g: group_encodings([list(m) for m in ms], base) for g, ms in members.items()}
    return [dataclasses.replace(j, encodings=encs[j.group]) if j.group is not None else j for j in jobs]


class OrtBackend:
    """Sections as ``.onnx_adapter`` files, built in this process or a spawn pool (``--jobs``)."""

    name = "ort"
    needs_adapter_for_default = False
    sdk_version: str | None = None

    def __init__(self) -> None:
        self.log: list[str] = []

    def version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime-{ort.__version__}"

    def check(self, base: Base) -> None:
        """Any registered base can be built: its graphs take the sections' inputs by name."""

    def build(
        self, ctx: BuildContext, jobs: list[SectionJob], work: Path, *, n_jobs: int, progress: Progress
    ) -> list[OutFile]:
        base = ctx.base
        jobs = _with_group_encodings(base, jobs)
        files: list[OutFile] = []
        if n_jobs <= 1 or len(jobs) <= 1:
            for job in jobs:
                files += _build_one(base, job, str(work))
                progress(job)
            return files
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = [(job, ex.submit(_build_one, base, job, str(work))) for job in jobs]
            for job, fut in futs:
                files += fut.result()
                progress(job)
        return files
