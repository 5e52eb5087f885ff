"""``build --backend qnn-ep --target T[,T...]``: the base compiled for Qualcomm's HTP, per target SoC,
into EPContext models (ONNX Runtime's QNN EP), and every section as an ``.onnx_adapter`` file that feeds
the compiled graphs' LoRA inputs.

The sections are the ``ort`` backend's (the compiled graphs keep the base's LoRA inputs by name). The
contexts are compiled once per base x target x QNN version: they belong to the default adapter's job,
whose cache key depends on neither the adapters nor the use cases, so registering, changing or removing
adapters never recompiles them. Per target, ``targets/<T>/``:

- ``shared/<graph>_ctx.onnx`` + one ``.bin``: every graph in one context, their weights stored once
  (``ep.share_ep_contexts``): what a device loads. Only with two or more graphs.
- ``unshared/<graph>_ctx.onnx`` + ``<graph>_ctx_qnn.bin``: each graph compiled alone, which the x86
  simulator can load (it cannot load a weight-shared context).

A base input with a default initializer (LoRA A/B, the slot map, alpha) would be dropped from the
compiled model's inputs, and the compiled graph would then refuse to load; so each graph is compiled
with those inputs required, and the compiled model gets the same defaults back as initializers: its
LoRA inputs stay optional and an ``.onnx_adapter`` (``RunOptions.add_active_adapter``) feeds them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loramgr import dtypes
from loramgr.errors import ExternalToolError, UsageError
from loramgr.infra.store import sha256_file
from loramgr.kinds import OwnerType
from loramgr.lora.inputs import section_inputs, use_case_inputs
from loramgr.records import Base, FileKind
from loramgr.runtime import qnn
from loramgr.sections.backends import BuildContext, OutFile, Progress, SectionJob, qdq
from loramgr.sections.backends.ort import OrtBackend
from loramgr.targets import ENCODINGS_FILE, SHARED, UNSHARED, Target, context_rel, parse_targets

log = logging.getLogger("loramgr")


class QnnEpBackend(OrtBackend):
    """Sections as ``.onnx_adapter`` files (the ort backend's) plus the base compiled per target."""

    name = "qnn-ep"

    def __init__(self, targets: str | None = None, quantize: str | None = None) -> None:
        super().__init__()
        if not targets:
            raise UsageError("--backend qnn-ep", "needs --target (e.g. sm8750)", hint="`loramgr target list`")
        if quantize is not None:
            qdq.check_scheme(quantize)
        self.targets: list[Target] = parse_targets(targets)
        self.quantize = quantize  # None: the SoC's float path; else a QDQ scheme (qdq.SCHEMES)
        self.qnn_version = qnn.qnn_version()  # exit 2 naming the pip install when the extra is missing
        self.sdk_version = self.qnn_version

    def version(self) -> str:
        import onnxruntime as ort

        names = ",".join(t.name for t in self.targets)
        return f"onnxruntime-{ort.__version__}+qnn-{self.qnn_version}+{names}" + (
            f"+{self.quantize}" if self.quantize else ""
        )

    def check(self, base: Base) -> None:
        """Integer LoRA inputs feed DequantizeLinear on the CPU reference; the HTP path takes float
        bases (fp32 or fp16) whose graphs it can place wholly, which the compile itself checks."""
        if any(dtypes.int_bits(ap.dtype) for ap in base.attachment_points):
            raise UsageError(
                f"base {base.ref}",
                "has integer LoRA inputs; --backend qnn-ep compiles float bases (fp32, fp16)",
                hint="export the base without --quantized-lora for an HTP target",
            )

    def build(
        self, ctx: BuildContext, jobs: list[SectionJob], work: Path, *, n_jobs: int, progress: Progress
    ) -> list[OutFile]:
        default = next((j for j in jobs if j.owner.type is OwnerType.DEFAULT), None)
        # a quantized target calibrates over, and checks, each job's LoRA tensors: prepared once here
        params = {j.cache_key: _job_inputs(ctx.base, j) for j in jobs} if self.quantize else {}
        files: list[OutFile] = []
        if default is not None:  # the contexts are the default job's: compiled when its key is new
            files += self.compile(ctx, work, default.cache_key, jobs, params)
        if self.quantize:  # every adapter and use case must fit the quantized LoRA inputs, before any file
            enc_file = next((work / f.rel_path for f in files if f.kind is FileKind.EP_ENCODINGS), None)
            self._check_ranges(ctx, jobs, params, enc_file)
        return super().build(ctx, jobs, work, n_jobs=n_jobs, progress=progress) + files

    def _check_ranges(
        self, ctx: BuildContext, jobs: list[SectionJob], params: dict[str, dict[str, Any]], enc_file: Path | None
    ) -> None:
        """Refuse (exit 5) an adapter or use case whose LoRA tensors the targets' encodings would clip."""
        for t in self.targets:
            path = enc_file or ctx.out / context_rel(t.name, UNSHARED, ENCODINGS_FILE)
            if not path.is_file():
                raise UsageError(str(path), "the quantized target's encodings are missing", hint="build with --force")
            enc = qdq.read_encodings(path)
            for j in jobs:
                problems = [p for g in enc.values() for p in qdq.out_of_range(params[j.cache_key], g)]
                qdq.refuse_out_of_range(j.owner.label, t.name, sorted(set(problems)))

    def compile(
        self,
        ctx: BuildContext,
        work: Path,
        cache_key: str,
        jobs: list[SectionJob],
        params: dict[str, dict[str, Any]],
    ) -> list[OutFile]:
        """Every graph of the base for every target, unshared and (two graphs or more) shared; with a
        QDQ scheme, the graphs quantized first (calibrated over every job's LoRA tensors)."""
        graphs = ctx.base.graph_names
        out: list[OutFile] = []
        staged = {g: _required_inputs_copy(ctx.graph_paths[g]) for g in graphs}
        try:
            quantized: dict[str, Path] = {}
            if self.quantize:
                quantized, enc = self._quantize(ctx, work, staged, jobs, params)
                for t in self.targets:
                    rel = context_rel(t.name, UNSHARED, ENCODINGS_FILE)
                    (work / rel).parent.mkdir(parents=True, exist_ok=True)
                    qdq.write_encodings(work / rel, self.quantize, enc)
                    out.append(_out(work, rel, FileKind.EP_ENCODINGS, list(graphs), cache_key))
            for t in self.targets:
                variants = [(UNSHARED, False)] + ([(SHARED, True)] if len(graphs) > 1 else [])
                for variant, share in variants:
                    for i, g in enumerate(graphs):
                        rel = context_rel(t.name, variant, f"{g}_ctx.onnx")
                        dest = work / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        src = quantized.get(g, staged[g][0])
                        _compile_checked(src, dest, t, g, share=share, last=i == len(graphs) - 1)
                        if not quantized:  # QNN refuses optional inputs on a QDQ graph: those stay required
                            _restore_defaults(dest, staged[g][1])
                        out.append(_out(work, rel, FileKind.EP_CONTEXT_MODEL, [g], cache_key))
                    # each compiled model read once for the .bin it loads; a shared .bin serves every graph
                    bins = {g: _context_bin(work / context_rel(t.name, variant, f"{g}_ctx.onnx")) for g in graphs}
                    for b in sorted(set(bins.values())):
                        users = [g for g in graphs if bins[g] == b]
                        out.append(
                            _out(work, context_rel(t.name, variant, b), FileKind.EP_CONTEXT_BINARY, users, cache_key)
                        )
                    self.log.append(f"compiled {', '.join(graphs)} for {t.name} ({variant}, QNN {self.qnn_version})")
        finally:
            for path, _ in staged.values():
                path.unlink(missing_ok=True)
                path.with_name(f"{path.name}.q.onnx").unlink(missing_ok=True)
        return out

    def _quantize(
        self,
        ctx: BuildContext,
        work: Path,
        staged: dict[str, tuple[Path, list[Any]]],
        jobs: list[SectionJob],
        params: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, Path], dict[str, dict[str, qdq.Encoding]]]:
        """The QDQ graphs (in the work directory) and their LoRA inputs' encodings per graph."""
        import onnx

        assert self.quantize is not None
        base = ctx.base
        float_q: dict[str, tuple[str, Path]] = {}
        for g, (copy, _) in staged.items():
            m = onnx.load(str(copy), load_external_data=False)
            qdq.clamp_mask(m, qdq.MASK_FILL[self.quantize])
            q_src = copy.with_name(f"{copy.name}.q.onnx")
            onnx.save(m, str(q_src))
            float_q[g] = (base.graph(g).kind, q_src)
        lora_sets = [params[j.cache_key] for j in jobs if j.owner.type is not OwnerType.DEFAULT]
        lora_sets.append(params[next(j for j in jobs if j.owner.type is OwnerType.DEFAULT).cache_key])
        vocab = int((base.export or {}).get("vocab_size") or 2)
        feeds = qdq.calibration_feeds(float_q, lora_sets, vocab)
        names = sorted({n for ap in base.attachment_points for n in ap.tensors} | {base.alpha_tensor or ""} - {""})
        ranges = qdq.stored_ranges([ctx.base_encodings, *(j.encodings for j in jobs)])  # AIMET's, if calibrated
        out: dict[str, Path] = {}
        enc: dict[str, dict[str, qdq.Encoding]] = {}
        taken = 0
        for g, (_, src) in float_q.items():
            dest = work / ".qdq" / f"{g}.onnx"
            dest.parent.mkdir(parents=True, exist_ok=True)
            taken += qdq.quantize_graph(src, dest, feeds[g], self.quantize, base.alpha_tensor, ranges)
            out[g] = dest
            enc[g] = qdq.lora_encodings(dest, names)
        self.log.append(
            f"quantized {', '.join(out)} as {self.quantize} over {len(lora_sets)} LoRA sets"
            + (f", {taken} activation ranges from stored encodings" if taken else "")
        )
        return out, enc


def _job_inputs(base: Base, job: SectionJob) -> dict[str, Any]:
    """The LoRA tensors a job's sections hold (what a runtime feeds the compiled graph)."""
    if job.use_case is not None:
        return use_case_inputs(list(job.members), base, job.encodings)
    return section_inputs(job.adapter, base, job.encodings)


def _out(work: Path, rel: str, kind: FileKind, graphs: list[str], cache_key: str) -> OutFile:
    p = work / rel
    return OutFile(rel, kind, graphs, None, cache_key, sha256_file(p), p.stat().st_size)


def _required_inputs_copy(graph: Path) -> tuple[Path, list[Any]]:
    """A copy of ``graph`` beside it (so its external data resolves) whose inputs with a default
    initializer have lost that default; returns the copy and the defaults (TensorProtos)."""
    import onnx

    m = onnx.load(str(graph), load_external_data=False)
    defaults = _drop_input_defaults(m)
    copy = graph.with_name(f".qnn-{os.getpid()}-{graph.name}")
    onnx.save(m, str(copy))
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in defaults):
        from onnx.external_data_helper import load_external_data_for_tensor

        for t in defaults:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                load_external_data_for_tensor(t, str(graph.parent))
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
    return copy, defaults


def _drop_input_defaults(model: Any) -> list[Any]:
    """Remove the initializers that give graph inputs a default (the compiler would drop those inputs
    from the compiled model); returns them."""
    inputs = {i.name for i in model.graph.input}
    defaults = [t for t in model.graph.initializer if t.name in inputs]
    keep = [t for t in model.graph.initializer if t.name not in inputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return defaults


def _restore_defaults(ctx_model: Path, defaults: list[Any]) -> None:
    """Give the compiled model's inputs their defaults back (inline: they are small)."""
    import onnx

    m = onnx.load(str(ctx_model), load_external_data=False)
    have = {t.name for t in m.graph.initializer}
    inputs = {i.name for i in m.graph.input}
    m.graph.initializer.extend(t for t in defaults if t.name not in have and t.name in inputs)
    onnx.save(m, str(ctx_model))


def _context_bin(ctx_model: Path) -> str:
    """The ``.bin`` an EPContext model loads (its nodes' ``ep_cache_context``), relative to it."""
    import onnx

    m = onnx.load(str(ctx_model), load_external_data=False)
    for n in m.graph.node:
        if n.op_type == "EPContext":
            for a in n.attribute:
                if a.name == "ep_cache_context":
                    return str(a.s.decode())
    raise UsageError(str(ctx_model), "the QNN compiler wrote no EPContext node")


def check_placement(graph_path: Path, graph: str, t: Target) -> None:
    """Refuse (exit 2, naming op, node and reason) a graph HTP cannot compile wholly for ``t``: the
    compile a build would make, into a scratch directory, with its inputs' defaults dropped as there."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="loramgr-htp-check-") as d:
        # the user's graph stays untouched: a scratch copy, its external data files beside it (ONNX
        # Runtime refuses a data file reached through a symbolic link out of the model's directory)
        m = onnx.load(str(graph_path), load_external_data=False)
        _drop_input_defaults(m)  # as the build does; their values are not needed for the check
        for x in m.graph.initializer:
            for e in x.external_data:
                if e.key == "location" and not (Path(d) / e.value).exists():
                    _link_or_copy(graph_path.parent / e.value, Path(d) / e.value)
        copy = Path(d) / graph_path.name
        onnx.save(m, str(copy))
        (Path(d) / "ctx").mkdir()
        _compile_checked(copy, Path(d) / "ctx" / "g_ctx.onnx", t, graph, share=False, last=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # same file system: no bytes copied
    except OSError:
        shutil.copyfile(src, dest)


def _compile_checked(model: Path, dest: Path, t: Target, graph: str, *, share: bool, last: bool) -> None:
    """Compile, and when HTP cannot place the whole graph say which op of which node it could not."""
    try:
        qnn.compile_model(model, dest, t.soc_model, share=share, last=last)
    except ExternalToolError as e:
        raise UsageError(
            f"graph {graph}",
            f"does not compile wholly for HTP target {t.name}: {_placement(model, t) or e.why}",
            hint="re-export the base with `loramgr base export` (its graphs are HTP-clean), or change the graph",
        ) from None
    import onnx

    m = onnx.load(str(dest), load_external_data=False)
    if any(n.op_type != "EPContext" for n in m.graph.node):  # never: CPU fallback is off
        raise UsageError(f"graph {graph}", f"is not wholly on HTP for {t.name}")


def _placement(model: Path, t: Target) -> str | None:
    """The nodes the QNN EP refuses, with its reason: a session with CPU fallback allowed and verbose
    logging, whose "Validation FAILED" lines name op type, node and why (ONNX Runtime has no API for a
    graph's partition, so its log is read)."""
    import onnxruntime as ort

    with tempfile.TemporaryFile() as err:
        so = qnn.session_options(t.soc_model, cpu_fallback=True)
        so.log_severity_level, so.log_verbosity_level = 0, 1
        ort.set_default_logger_severity(0)
        try:
            with qnn.redirect_fd(2, err.fileno()):
                ort.InferenceSession(str(model), sess_options=so)
        except Exception as e:  # noqa: BLE001 - the placement is a hint; the compile error stands without it
            log.debug("no placement report for %s: %s", model, e)
        finally:
            ort.set_default_logger_severity(4)
        err.seek(0)
        text = err.read().decode(errors="replace")
    # the EP validates a graph more than once: each node once
    found = list(dict.fromkeys(re.findall(r"Operator type: (\S+) Node name: (\S*) .*?\n\s*REASON : ([^\n]*)", text)))
    if not found:
        return None
    kinds: dict[tuple[str, str], list[str]] = {}
    for op, name, why in found:
        kinds.setdefault((op, why.strip()[:160]), []).append(name or "(unnamed)")
    shown = "; ".join(
        f"op {op} (node {names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''}): {why}"
        for (op, why), names in list(kinds.items())[:3]
    )
    if any("Cannot get shape" in why for _, why in kinds):
        shown += " [HTP needs static shapes: export the graph with fixed input shapes]"
    return f"HTP cannot place {len(found)} node(s): {shown}"
