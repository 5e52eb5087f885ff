"""QAIRT backend: drives the SDK's own tools by subprocess (docs/conventions.md, "QAIRT tools").

Per graph: the base DLC (given with ``--dlc GRAPH=PATH``, else converted here with
``qairt-converter --lora_weight_list``), each adapter's prepared weights as ``<use_case>.safetensors``
keyed by the graph's tensor names, ``lora_importer_config.yaml``, then ``qairt-lora-importer``.
Per context (the graphs that share attachment points, e.g. prefill + decode): the importers'
``lora_output_files.yaml`` merged into one adapter weight config (with
``share_adapters_between_graphs: Yes`` for super adapters), then ``qnn-context-binary-generator
--adapter_weight_config``, whose ``{graph}_{use_case}.bin`` sections, ``default_adapter`` section and
context binary are collected. The tools run in ``OUT/qairt/`` (not in the build's temporary
directory) with relative paths, so each step can be re-run there by hand from the build log.
``--lora-version 3`` hands the build to the QNN LoRA v3 flow (``qairt_v3.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from safetensors.numpy import save_file

from loramgr.deploy.weightlist import render, weight_lists
from loramgr.errors import ExternalToolError, IncompatibleError, UsageError
from loramgr.infra.store import sha256_file
from loramgr.records import Adapter, ArtifactKind, Base, FileKind, OwnerType, SectionKind, SectionOwner
from loramgr.sections.backends import BuildContext, OutFile, Progress, SectionJob
from loramgr.sections.backends.qairt_common import (
    CONVERTER,
    GENERATOR,
    IMPORTED,
    IMPORTER,
    MODES,
    QUANTIZED,
    contexts_of,
    finish,
    render_weight_config,
    tools_dir,
    use_case_names,
)
from loramgr.sections.backends.sdk import Sdk


class QairtBackend:
    """Sections by the QAIRT SDK's own tools (LoRA v2 flow)."""

    name = "qairt"
    #: the generator writes the default adapter section only alongside adapters
    needs_adapter_for_default = True

    def __init__(
        self,
        sdk_root: str | Path | None = None,
        dlcs: dict[str, str] | None = None,
        tool_timeout: float | None = None,
        htp_config: str | None = None,
        lora_version: int = 2,
        quant_updatable: str | None = None,
    ) -> None:
        if lora_version not in (2, 3):
            raise UsageError(f"--lora-version {lora_version}", "must be 2 or 3")
        if quant_updatable is not None and (lora_version != 3 or quant_updatable not in MODES):
            raise UsageError(f"--quant-updatable {quant_updatable}", f"takes {', '.join(MODES)} with --lora-version 3")
        self.lora_version = lora_version
        self.quant_updatable = quant_updatable or "adapter_only"  # the model creator's own default
        self.sdk = Sdk.locate(sdk_root, timeout=tool_timeout)
        self.sdk_version: str | None = self.sdk.version
        self.log: list[str] = self.sdk.log
        self.dlcs = {g: Path(p).absolute() for g, p in (dlcs or {}).items()}
        for g, p in self.dlcs.items():
            if not p.is_file():
                raise UsageError(f"--dlc {g}={p}", "no such file")
        self.htp_config = Path(htp_config).absolute() if htp_config else None
        if self.htp_config and not self.htp_config.is_file():
            raise UsageError(f"--htp-config {htp_config}", "no such file")
        self._dlc_digest = {g: sha256_file(p) for g, p in sorted(self.dlcs.items())}

    def version(self) -> str:
        """Part of every cache key: the SDK version, given DLCs and the HTP config."""
        extra = json.dumps(
            {"dlc": self._dlc_digest, "htp": sha256_file(self.htp_config) if self.htp_config else None}
            | ({"lora_version": 3, "quant_updatable": self.quant_updatable} if self.lora_version == 3 else {}),
            sort_keys=True,
        )
        return f"qairt-{self.sdk.version}-{hashlib.sha256(extra.encode()).hexdigest()[:12]}"

    def check(self, base: Base) -> None:
        self.sdk.check_base(base)
        if self.lora_version == 3 and not base.max_adapters:
            raise IncompatibleError(
                f"base {base.ref}",
                "has one scalar alpha; QNN LoRA v3 needs the alpha vector lora_alpha [1, N]",
                hint="export the base with --max-adapters N",
            )
        unknown = sorted(set(self.dlcs) - set(base.graph_names))
        if unknown:
            raise UsageError(
                f"--dlc {unknown[0]}",
                f"base {base.ref} has no graph of that name (graphs: {', '.join(base.graph_names)})",
            )

    # -- the build ----------------------------------------------------------------------------------
    def build(
        self, ctx: BuildContext, jobs: list[SectionJob], work: Path, *, n_jobs: int, progress: Progress
    ) -> list[OutFile]:
        from loramgr.lora.inputs import prepared_inputs

        base = ctx.base
        self.check(base)
        if self.lora_version == 3:
            from loramgr.sections.backends.qairt_v3 import build_v3

            return build_v3(self, ctx, jobs, work, n_jobs=n_jobs, progress=progress)
        if any(j.use_case is not None for j in jobs):
            raise UsageError(
                f"base {base.ref}",
                "has use cases; the qairt backend builds them with the QNN LoRA v3 flow",
                hint="build with --lora-version 3 (or --backend ort)",
            )
        adapter_jobs = [j for j in jobs if j.adapter is not None]
        default_job = next((j for j in jobs if j.owner.type is OwnerType.DEFAULT), None)
        share = any(j.share for j in jobs)
        ucs = use_case_names(_adapter(j) for j in adapter_jobs)
        root = tools_dir(ctx)
        files: list[OutFile] = []
        prepared = {_adapter(j).id: prepared_inputs(_adapter(j), base) for j in adapter_jobs}
        pool = ThreadPoolExecutor(max_workers=max(1, n_jobs))
        try:
            per_graph = list(
                pool.map(lambda g: self._import_graph(ctx, g, root, adapter_jobs, ucs, prepared), base.graph_names)
            )
            imported = {g: r[0] for g, r in zip(base.graph_names, per_graph, strict=True)}
            for _, graph_files in per_graph:
                files += graph_files
            named = [(ucs[_adapter(j).id], j) for j in adapter_jobs]
            for ctx_files in pool.map(
                lambda c: self.generate(c[0], c[1], root, work, imported, named, default_job, share),
                contexts_of(base).items(),
            ):
                files += ctx_files
        finally:
            pool.shutdown(wait=True)
        return finish(files, ctx, work, jobs, progress)

    def _dlc(self, ctx: BuildContext, g: str, gdir: Path) -> tuple[Path, list[OutFile]]:
        """The graph's DLC: the one given, or converted from the ONNX graph with its weight list."""
        dlc = gdir / f"{g}.dlc"
        if g in self.dlcs:
            shutil.copyfile(self.dlcs[g], dlc)
            return dlc, []
        wl = gdir / "lora_weights.txt"
        wl.write_text(render(weight_lists(ctx.base)[g]))
        self.sdk.invoke(
            CONVERTER,
            [
                "--input_network",
                ctx.graph_paths[g],
                "--lora_weight_list",
                wl.name,
                "--quant_updatable_mode",
                ctx.base.quant_updatable_mode or "none",
                "--output_path",
                dlc.name,
            ],
            cwd=gdir,
        )
        if not dlc.is_file():
            raise ExternalToolError(CONVERTER, f"exited 0 but did not write {dlc}")
        return dlc, [
            OutFile(f"qairt/{g}/{wl.name}", FileKind.WEIGHT_LIST, [g]),
            OutFile(f"qairt/{g}/{dlc.name}", FileKind.DLC, [g]),
        ]

    def _import_graph(
        self,
        ctx: BuildContext,
        g: str,
        root: Path,
        adapter_jobs: list[SectionJob],
        ucs: dict[int, str],
        prepared: dict[int, dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], list[OutFile]]:
        """Write the importer inputs for graph ``g`` and run ``qairt-lora-importer`` on them."""
        gdir = root / g
        gdir.mkdir(parents=True, exist_ok=True)
        base = ctx.base
        dlc, files = self._dlc(ctx, g, gdir)
        names = weight_lists(base)[g]
        quantized = base.precision in QUANTIZED
        cases = []
        for j in adapter_jobs:
            a = _adapter(j)
            uc = ucs[a.id]
            save_file(
                {n: prepared[a.id][n] for n in names},
                str(gdir / f"{uc}.safetensors"),
                metadata={"loramgr.adapter": a.ref, "loramgr.sha256": a.sha256},
            )
            case = {"name": uc, "model_name": str(ctx.graph_paths[g]), "lora_weights": f"{uc}.safetensors"}
            files.append(
                OutFile(f"qairt/{g}/{uc}.safetensors", FileKind.PREPARED_WEIGHTS, [g], SectionOwner.adapter(a))
            )
            if j.encodings:
                (gdir / f"{uc}.encodings").write_text(json.dumps(j.encodings.to_aimet(), indent=1, sort_keys=True))
                case["quant_overrides"] = f"{uc}.encodings"
                files.append(OutFile(f"qairt/{g}/{uc}.encodings", FileKind.ENCODINGS, [g], SectionOwner.adapter(a)))
            elif quantized:
                raise IncompatibleError(
                    a.ref,
                    f"base {base.ref} is {base.precision} but the adapter has no encodings for it",
                    hint="run `loramgr calibrate` or `loramgr encodings import`",
                )
            cases.append(case)
        cfg = gdir / "lora_importer_config.yaml"
        cfg.write_text(yaml.safe_dump({"use_case": cases}, sort_keys=False))
        files.append(OutFile(f"qairt/{g}/{cfg.name}", FileKind.IMPORTER_CONFIG, [g]))
        out = gdir / "imported"
        args: list[Any] = [
            "--input_network",
            ctx.graph_paths[g],
            "--input_dlc",
            dlc.name,
            "--lora_config",
            cfg.name,
            "--output_dir",
            out.name,
        ]
        if quantized:
            args.append("--enable_float_fallback")
        self.sdk.invoke(IMPORTER, args, cwd=gdir)
        listing = out / "lora_output_files.yaml"
        entries = self.read_output_files(listing, g, ucs.values())
        files.append(OutFile(f"qairt/{g}/imported/{listing.name}", FileKind.IMPORTER_OUTPUT, [g]))
        by_uc = {v: k for k, v in ucs.items()}
        for e in entries:
            for key in ("weights", "encodings"):
                if e.get(key):
                    rel = Path(e[key]).relative_to(root.resolve()).as_posix()
                    aid = by_uc[e["name"]]
                    owner = next(j.owner for j in adapter_jobs if _adapter(j).id == aid)
                    files.append(OutFile(f"qairt/{rel}", IMPORTED[key], [g], owner))
                    e[key] = rel
        return entries, files

    def read_output_files(self, listing: Path, g: str, ucs: Iterable[str]) -> list[dict[str, Any]]:
        """``lora_output_files.yaml``: one entry per use case with weights (and encodings) that exist.
        Paths are made absolute (the tool writes them relative to its output directory or cwd)."""
        if not listing.is_file():
            raise ExternalToolError(IMPORTER, f"exited 0 but did not write {listing}")
        try:
            doc = yaml.safe_load(listing.read_text(errors="replace"))
        except yaml.YAMLError as e:
            raise ExternalToolError(IMPORTER, f"wrote unreadable YAML {listing} ({type(e).__name__})") from None
        cases = doc.get("use_case") if isinstance(doc, dict) else None
        if not isinstance(cases, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in cases
        ):
            raise ExternalToolError(IMPORTER, f"{listing}: expected `use_case: [{{name, weights, ...}}]`")
        got = {c["name"]: dict(c) for c in cases}
        missing = sorted(set(ucs) - set(got))
        if missing:
            raise ExternalToolError(IMPORTER, f"{listing} lacks use case(s) {', '.join(missing)}")
        out = []
        for uc in ucs:
            c = got[uc]
            c.setdefault("graph", g)
            for key in ("weights", "encodings"):
                if not c.get(key):
                    continue
                p = Path(str(c[key]))
                cands = [p] if p.is_absolute() else [listing.parent / p, listing.parent.parent / p]
                found = next((x for x in cands if x.is_file()), None)
                if found is None or listing.parent.parent not in found.resolve().parents:
                    raise ExternalToolError(
                        IMPORTER,
                        f"{listing} names {key} {c[key]} for {uc}, which is missing "
                        "or outside the importer's directory",
                    )
                c[key] = str(found.resolve())
            if not c.get("weights"):
                raise ExternalToolError(IMPORTER, f"{listing}: use case {uc} has no weights")
            out.append(c)
        return out

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
    ) -> list[OutFile]:
        """Merge the graphs' use cases into one adapter weight config and run the generator once;
        ``named`` pairs each job with its use-case name in the tools' files."""
        cases = [c for g in graphs for c in imported.get(g, [])]
        if not cases:  # a part without attachment points: nothing to generate
            return []
        cfg = root / f"{ctx}.adapter_weight_config.yaml"
        cfg.write_text(render_weight_config(cases, share and len(graphs) > 1))
        gen = root / "contexts" / ctx
        gen.mkdir(parents=True, exist_ok=True)
        args: list[Any] = [
            "--backend",
            self.sdk.lib("libQnnHtp.so"),
            "--model",
            self.sdk.lib("libQnnModelDlc.so"),
            "--dlc_path",
            ",".join(f"{g}/{g}.dlc" for g in graphs),
            "--binary_file",
            ctx,
            "--output_dir",
            gen.relative_to(root),
            "--adapter_weight_config",
            cfg.name,
        ]
        if self.htp_config:
            args += ["--config_file", self.htp_config]
        self.sdk.invoke(GENERATOR, args, cwd=root)
        files = [OutFile(f"qairt/{cfg.name}", FileKind.ADAPTER_WEIGHT_CONFIG, graphs)]
        shared = share and len(graphs) > 1
        for uc, j in named:
            folder = f"usecases/{j.use_case.name}" if j.use_case is not None else _adapter(j).ref
            kind = SectionKind.of(j.owner.type, shared)
            for src, gs in self._sections(gen, ctx, graphs, uc, shared):
                files.append(self._take(src, f"sections/{folder}/{src.name}", kind, gs, j, work))
        if default_job is not None:
            for src, gs in self._sections(gen, ctx, graphs, "default_adapter", shared):
                files.append(
                    self._take(src, f"sections/default/{src.name}", SectionKind.DEFAULT, gs, default_job, work)
                )
            ctx_bin = gen / f"{ctx}.bin"
            if not ctx_bin.is_file():
                raise ExternalToolError(GENERATOR, f"exited 0 but did not write the context binary {ctx_bin}")
            files.append(self._take(ctx_bin, f"contexts/{ctx}.bin", FileKind.CONTEXT_BINARY, graphs, default_job, work))
        return files

    @staticmethod
    def _sections(gen: Path, ctx: str, graphs: list[str], uc: str, shared: bool) -> list[tuple[Path, list[str]]]:
        """The generator's ``{graph}_{use_case}.bin`` files: one per graph, or with super adapters one
        for the whole context (named after any of its graphs or after the context)."""
        if not shared:
            out = [(gen / f"{g}_{uc}.bin", [g]) for g in graphs]
            for p, _ in out:
                if not p.is_file():
                    raise ExternalToolError(GENERATOR, f"exited 0 but did not write section {p}")
            return out
        cands = [gen / f"{n}_{uc}.bin" for n in (*graphs, ctx)]
        found = [p for p in dict.fromkeys(cands) if p.is_file()]
        if not found:
            raise ExternalToolError(
                GENERATOR,
                f"exited 0 but did not write a shared section for {uc} in {gen} "
                f"(looked for {', '.join(p.name for p in cands)})",
            )
        return [(found[0], list(graphs))]

    @staticmethod
    def _take(src: Path, rel: str, kind: ArtifactKind, graphs: list[str], job: SectionJob, work: Path) -> OutFile:
        """Move a tool's output into the work directory, from where the build places it atomically."""
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), dest)
        return OutFile(rel, kind, list(graphs), job.owner if isinstance(kind, SectionKind) else None, job.cache_key)


def _adapter(job: SectionJob) -> Adapter:
    """The adapter of an adapter job (the default job has none)."""
    if job.adapter is None:
        raise ValueError("the default adapter's job has no adapter record")
    return job.adapter
