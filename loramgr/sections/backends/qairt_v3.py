"""The QNN LoRA v3 flow of the qairt backend (``build --backend qairt --lora-version 3``; docs/qairt-lora-v3.md).

Per graph with attachment points, under ``qairt/<graph>/``:

1. ``creator/``: the creator's inputs. ``base.onnx`` is the base graph without LoRA branches; each use
   case (every adapter alone, and every use case of the base) gets ``<uc>.onnx`` whose branches hold
   its real-rank, rank-concatenated weights as initializers (``MatMul -> Mul(scaling) -> MatMul``,
   :mod:`loramgr.formats.lora_v3`); the base weights stay in a copy of the graph's data file, the
   branches in ``<uc>.lora.data``. One ``<adapter>.json`` per adapter (``name``, ``rank``, ``alpha``,
   ``target_operator_names``), ``<uc>.encodings`` (AIMET) when the mode takes per-use-case encodings,
   and ``lora_config.yaml`` (``adapter`` + ``use-case``, one base use case).
2. ``qairt-lora-model-creator --lora_config creator/lora_config.yaml --output_dir creator_out
   --quant_updatable_mode MODE`` -> ``base_model.onnx``, ``lora_tensor_names.txt``,
   ``lora_importer_config.yaml``.
3. ``qairt-converter --input_network creator_out/base_model.onnx --lora_weight_list
   creator_out/lora_tensor_names.txt --quant_updatable_mode MODE``; ``qairt-quantizer`` when the base
   is int8/int16; ``qairt-lora-importer`` (``--input_network`` unless MODE is ``none``).

Per context: the v2 generator step (merged adapter weight config, super adapters with
``--share-adapters``), collecting ``<graph>_<uc>.bin``. Every refusal the SDK would make that loramgr
can see is made first, all listed at once (exit 5), before any tool runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from loramgr import dtypes
from loramgr.errors import ExternalToolError, IncompatibleError
from loramgr.formats.lora_v3 import strip_lora, with_use_case
from loramgr.lora.inputs import adapter_ranks, real_rank_branches
from loramgr.lora.rules import Problem
from loramgr.lora.usecase import slot_problems, summed_rank_problems
from loramgr.records import Adapter, Base, FileKind, OwnerType, SectionKind, SectionOwner
from loramgr.sections.backends import BuildContext, OutFile, Progress, SectionJob
from loramgr.sections.backends.qairt_common import (
    CONVERTER,
    GENERATOR,
    IMPORTED,
    IMPORTER,
    QUANTIZED,
    contexts_of,
    finish,
    tools_dir,
    use_case_names,
)

if TYPE_CHECKING:
    from loramgr.formats.lora_v3 import Branch
    from loramgr.sections.backends.sdk import Sdk


class V2Steps(Protocol):
    """What the v3 flow uses of the qairt backend: its SDK, its mode and the steps both flows share."""

    sdk: Sdk
    quant_updatable: str

    def generate(
        self,
        ctx: str,
        graphs: list[str],
        root: Path,
        work: Path,
        imported: dict[str, list[dict[str, Any]]],
        named: list[tuple[str, SectionJob]],
        default_job: SectionJob | None,
        share: bool,
    ) -> list[OutFile]: ...

    def read_output_files(self, listing: Path, g: str, ucs: Iterable[str]) -> list[dict[str, Any]]: ...


CREATOR = "qairt-lora-model-creator"
QUANTIZER = "qairt-quantizer"
BASE_USE_CASE = "base"


@dataclass
class UseCaseSpec:
    """One use case of the creator's config: a job, its name in the tools' files and its adapters."""

    name: str
    job: SectionJob
    members: tuple[Adapter, ...]
    adapter_names: list[str] = field(default_factory=list)


def use_cases_of(jobs: list[SectionJob], adapter_names: dict[int, str]) -> list[UseCaseSpec]:
    """Every adapter alone, then every use case, named uniquely (``base`` is the base use case)."""
    taken = {BASE_USE_CASE, "default_adapter", *adapter_names.values()}
    out = []
    for j in jobs:
        if j.adapter is not None:
            out.append(UseCaseSpec(adapter_names[j.adapter.id], j, (j.adapter,)))
    for j in jobs:
        if j.use_case is not None:
            name = j.use_case.name.replace("-", "_")
            while name in taken:
                name += "_uc"
            taken.add(name)
            out.append(UseCaseSpec(name, j, j.members))
    for u in out:
        u.adapter_names = [adapter_names[m.id] for m in u.members]
    return out


def refusals(base: Base, specs: list[UseCaseSpec], mode: str, ranks: dict[int, dict[str, int]]) -> list[Problem]:
    """What the SDK would refuse (its stated errors, docs/qairt-lora-v3.md), found before any tool runs:
    the use cases' slot and rank checks (as ``usecase create`` makes them), and encodings the mode
    cannot take. ``ranks``: adapter id -> attachment point -> rank. (A base without alpha slots never
    gets here: the backend's ``check`` refuses it.)"""
    problems = []
    for u in specs:
        refs = [m.ref for m in u.members]
        found = slot_problems(base, refs) + summed_rank_problems(base, {m.ref: ranks[m.id] for m in u.members})
        problems += [Problem(p.code, f"{u.name}: {p.message}", p.subject, p.hint) for p in found]
        if mode == "none" and u.job.encodings:
            problems.append(
                Problem(
                    "encodings_need_updatable_mode",
                    f"{u.name} has its own encodings but --quant-updatable none shares one encoding set across "
                    "use cases (the alpha encoding must be the same): use adapter_only or all, or drop them",
                    u.name,
                    "use adapter_only or all, or drop them",
                )
            )
        if mode == "all" and dtypes.int_bits(base.precision) and not u.job.encodings:
            problems.append(
                Problem(
                    "encodings_missing",
                    f"{u.name}: --quant-updatable all on a {base.precision} base needs per-use-case encodings "
                    "(run `loramgr calibrate`)",
                    u.name,
                    "run `loramgr calibrate`",
                )
            )
    return problems


def build_v3(
    be: V2Steps, ctx: BuildContext, jobs: list[SectionJob], work: Path, *, n_jobs: int, progress: Progress
) -> list[OutFile]:
    base, mode = ctx.base, be.quant_updatable
    adapters = {m.id: m for j in jobs for m in ((j.adapter,) if j.adapter else j.members)}
    specs = use_cases_of(
        [j for j in jobs if j.adapter is not None or j.use_case is not None], use_case_names(adapters.values())
    )
    ranks = {a.id: adapter_ranks(a, base) for a in adapters.values()}
    problems = refusals(base, specs, mode, ranks)
    if problems:
        raise IncompatibleError(
            f"base {base.ref}",
            f"the QNN LoRA v3 flow would refuse this build: {'; '.join(p.message for p in problems)}",
            details=[p.to_json() for p in problems],
        )
    root = tools_dir(ctx)
    files: list[OutFile] = []
    graphs = [g for g in base.graph_names if base.points_of(g)]
    branches = {u.name: real_rank_branches(list(u.members), base) for u in specs}  # the same for every graph
    here: dict[str, list[UseCaseSpec]] = {}
    for g in graphs:  # every creator input first: a model loramgr cannot make stops the build before any tool
        graph_files, here[g] = write_creator_inputs(ctx, g, root / g / "creator", specs, mode, ranks, branches)
        files += graph_files
    graphs = [g for g in graphs if here[g]]
    pool = ThreadPoolExecutor(max_workers=max(1, n_jobs))
    try:
        per_graph = list(pool.map(lambda g: run_tools(be, ctx, g, root, here[g], mode), graphs))
        imported = {g: r[0] for g, r in zip(graphs, per_graph, strict=True)}
        for _, graph_files in per_graph:
            files += graph_files
        named = [(u.name, u.job) for u in specs]
        default_job = next((j for j in jobs if j.owner.type is OwnerType.DEFAULT), None)
        share = any(j.share for j in jobs)
        for ctx_files in pool.map(
            lambda c: be.generate(c[0], c[1], root, work, imported, named, default_job, share),
            contexts_of(base).items(),
        ):
            files += ctx_files
    finally:
        pool.shutdown(wait=True)
    files += group_quant_sections(base, specs, root, work)
    return finish(files, ctx, work, jobs, progress)


#: How the generator is asked for quantization-only sections (one per group, QNN LoRA v3 grouped
#: LoRA) was NOT found in public material (docs/qairt-lora-v3.md, an [inf] point; the QNN API has the section kind
#: QNN_CONTEXT_SECTION_UPDATABLE_QUANT_PARAMS since 2.27). This is the one place that depends on it:
#: loramgr looks for ``<graph>_<group>.bin`` beside the use cases' sections (the naming of every other
#: section) and stops with exit 7 when the generator wrote none; it never writes such a file itself.
GROUP_SECTION_HELP = (
    "the generator switch that emits quantization-only sections (QNN_CONTEXT_SECTION_UPDATABLE_QUANT_PARAMS) "
    "is not in public material; pass it with --htp-config if your SDK has one, or remove the group "
    "(docs/qairt-lora-v3.md)"
)


def group_quant_sections(base: Base, specs: list[UseCaseSpec], root: Path, work: Path) -> list[OutFile]:
    """Collect each group's quantization-only sections from the generator's output, or refuse (exit 7)."""
    groups: dict[str, list[UseCaseSpec]] = {}
    for u in specs:
        if u.job.use_case is not None and u.job.use_case.group:
            groups.setdefault(u.job.use_case.group, []).append(u)
    files = []
    for group, members in sorted(groups.items()):
        key = hashlib.sha256("".join(sorted(u.job.cache_key for u in members)).encode()).hexdigest()
        for cname, graphs in contexts_of(base).items():
            found = [(root / "contexts" / cname / f"{g}_{group}.bin", g) for g in graphs]
            missing = [p.name for p, _ in found if not p.is_file()]
            if missing:
                raise ExternalToolError(
                    GENERATOR,
                    f"wrote no quantization-only section for group {group} "
                    f"({', '.join(missing)}): {GROUP_SECTION_HELP}",
                )
            for src, g in found:
                dest = work / "sections" / "groups" / group / src.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), dest)
                files.append(
                    OutFile(
                        dest.relative_to(work).as_posix(),
                        SectionKind.GROUP_QUANT,
                        [g],
                        SectionOwner.group(group),
                        cache_key=key,
                    )
                )
    return files


def write_creator_inputs(
    ctx: BuildContext,
    g: str,
    cdir: Path,
    specs: list[UseCaseSpec],
    mode: str,
    ranks: dict[int, dict[str, int]],
    branches: dict[str, dict[str, Branch]],
) -> tuple[list[OutFile], list[UseCaseSpec]]:
    """The creator's inputs for graph ``g`` (see the module docstring); returns them and the use cases
    with an attachment point in ``g`` (a part without any of a use case's points has no section of it)."""
    import onnx

    base = ctx.base
    src = ctx.graph_paths[g]
    cdir.mkdir(parents=True, exist_ok=True)
    graph = next(x for x in base.graphs if x.name == g)
    for e in graph.external_data:  # the base weights, once, beside the models that point at them
        shutil.copyfile(src.parent / e.location, cdir / e.location)
    model = onnx.load(str(src), load_external_data=False)
    points = strip_lora(model, [(ap.module_path, ap.tensor_a) for ap in base.points_of(g)], g)
    rel = f"qairt/{g}/creator"
    files = [OutFile(f"{rel}/{e.location}", FileKind.CREATOR_INPUT, [g]) for e in graph.external_data]
    onnx.save_model(model, str(cdir / f"{BASE_USE_CASE}.onnx"))
    files.append(OutFile(f"{rel}/{BASE_USE_CASE}.onnx", FileKind.CREATOR_INPUT, [g]))
    use_cases: list[dict[str, Any]] = [
        {"name": BASE_USE_CASE, "adapter_names": [], "model_name": f"{BASE_USE_CASE}.onnx"}
    ]
    adapters: dict[str, Adapter] = {}
    included = []
    for u in specs:
        in_graph = {m: b for m, b in branches[u.name].items() if m in points}
        if not in_graph:
            continue
        included.append(u)
        um = with_use_case(model, points, in_graph)
        onnx.save_model(
            um,
            str(cdir / f"{u.name}.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{u.name}.lora.data",
            size_threshold=1024,
        )
        entry: dict[str, Any] = {"name": u.name, "adapter_names": u.adapter_names, "model_name": f"{u.name}.onnx"}
        files.append(OutFile(f"{rel}/{u.name}.onnx", FileKind.CREATOR_INPUT, [g]))
        if (cdir / f"{u.name}.lora.data").exists():
            files.append(OutFile(f"{rel}/{u.name}.lora.data", FileKind.CREATOR_INPUT, [g]))
        overrides = quant_overrides(u.job.encodings.to_aimet(), mode) if u.job.encodings else None
        if overrides:
            (cdir / f"{u.name}.encodings").write_text(json.dumps(overrides, indent=1, sort_keys=True))
            entry["quant_overrides"] = f"{u.name}.encodings"
            files.append(OutFile(f"{rel}/{u.name}.encodings", FileKind.ENCODINGS, [g]))
        use_cases.append(entry)
        adapters.update(
            (n, m) for n, m in zip(u.adapter_names, u.members, strict=True) if set(ranks[m.id]) & set(points)
        )
        entry["adapter_names"] = [n for n in u.adapter_names if n in adapters]
    adapter_entries = []
    for name, a in adapters.items():
        mine = ranks[a.id]
        doc = {
            "name": name,
            "rank": max(mine.values()),
            "alpha": float(a.lora_alpha or 0.0),
            "target_operator_names": [p.op_name for m, p in points.items() if m in mine],
        }
        (cdir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        files.append(OutFile(f"{rel}/{name}.json", FileKind.CREATOR_INPUT, [g], SectionOwner.adapter(a)))
        adapter_entries.append({"name": name, "lora_config": f"{name}.json"})
    cfg = {"adapter": adapter_entries, "use-case": use_cases}
    (cdir / "lora_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    files.append(OutFile(f"{rel}/lora_config.yaml", FileKind.LORA_CREATOR_CONFIG, [g]))
    return files, included


def quant_overrides(aimet: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """What a use case's ``quant_overrides`` carries per mode: nothing with ``none`` (one encoding set
    for every use case), its LoRA weight encodings with ``adapter_only``, everything calibrated (I/O
    and weights) with ``all``. Weight encodings are keyed by the base graph's LoRA input names and
    I/O encodings by its tensor names; which names the creator expects for the branches it builds is
    not shown in public material [inf] (docs/qairt-lora-v3.md)."""
    if mode == "none":
        return None
    out = aimet if mode == "all" else aimet | {"activation_encodings": {}}
    return out if out.get("activation_encodings") or out.get("param_encodings") else None


def run_tools(
    be: V2Steps, ctx: BuildContext, g: str, root: Path, specs: list[UseCaseSpec], mode: str
) -> tuple[list[dict[str, Any]], list[OutFile]]:
    """Creator, converter, (quantizer), importer for graph ``g``; returns the importer's entries."""

    gdir = root / g
    out = gdir / "creator_out"
    # run where its config lives: paths in it are relative to both the file and the working directory
    be.sdk.invoke(
        CREATOR,
        ["--lora_config", "lora_config.yaml", "--output_dir", f"../{out.name}", "--quant_updatable_mode", mode],
        cwd=gdir / "creator",
    )
    made = {n: out / n for n in ("base_model.onnx", "lora_tensor_names.txt", "lora_importer_config.yaml")}
    for p in made.values():
        if not p.is_file():
            raise ExternalToolError(CREATOR, f"exited 0 but did not write {p}")
    rel = f"qairt/{g}/creator_out"
    files = [OutFile(f"{rel}/{n}", FileKind.CREATOR_OUTPUT, [g]) for n in made]
    dlc = gdir / f"{g}.dlc"
    be.sdk.invoke(
        CONVERTER,
        [
            "--input_network",
            "creator_out/base_model.onnx",
            "--lora_weight_list",
            "creator_out/lora_tensor_names.txt",
            "--quant_updatable_mode",
            mode,
            "--output_path",
            dlc.name,
        ],
        cwd=gdir,
    )
    quantized = ctx.base.precision in QUANTIZED
    if quantized:
        qdlc = gdir / f"{g}_quantized.dlc"
        be.sdk.invoke(
            QUANTIZER, ["--input_dlc", dlc.name, "--output_dlc", qdlc.name, "--enable_float_fallback"], cwd=gdir
        )
        dlc = qdlc
    if not dlc.is_file():
        raise ExternalToolError(CONVERTER if not quantized else QUANTIZER, f"exited 0 but did not write {dlc}")
    files.append(OutFile(f"qairt/{g}/{dlc.name}", FileKind.DLC, [g]))
    # the importer too runs beside its config (the creator's lora_importer_config.yaml)
    args: list[Any] = [] if mode == "none" else ["--input_network", "base_model.onnx"]
    args += [
        "--input_dlc",
        f"../{dlc.name}",
        "--lora_config",
        "lora_importer_config.yaml",
        "--output_dir",
        "../imported",
    ]
    if quantized:
        args.append("--enable_float_fallback")
    be.sdk.invoke(IMPORTER, args, cwd=out)
    listing = gdir / "imported" / "lora_output_files.yaml"
    entries = be.read_output_files(listing, g, [u.name for u in specs])
    files.append(OutFile(f"qairt/{g}/imported/{listing.name}", FileKind.IMPORTER_OUTPUT, [g]))
    for e in entries:
        e["graph"] = g  # one importer run per graph: its use cases are this graph's
        for key in ("weights", "encodings"):
            if e.get(key):
                e[key] = Path(e[key]).relative_to(root.resolve()).as_posix()
                files.append(OutFile(f"qairt/{e[key]}", IMPORTED[key], [g]))
    return entries, files
