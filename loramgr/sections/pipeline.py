"""``loramgr build``: select adapters, validate them as a group, build what changed, record it.

Incremental: every section job has a content-hash cache key (adapter bytes + config, base
fingerprint, backend and its version, sharing, precision); a job whose key was built before and whose
file still verifies is reused, not rebuilt. Crash-safe: new files are written under
``OUT/.loramgr-tmp-<build>/`` and moved into place one by one with ``os.replace``; artifacts are
recorded (and the build marked done) only after every file is in place, so a killed build leaves a
``running`` row that the next build marks failed, and never a recorded artifact that is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramgr import dtypes
from loramgr.deploy.weightlist import write_weight_lists
from loramgr.errors import ConflictError, IncompatibleError, LoramgrError, NotFoundError
from loramgr.infra.gcpause import gc_paused
from loramgr.infra.progress import Progress
from loramgr.infra.store import sha256_file
from loramgr.lora.inputs import weight_encodings
from loramgr.records import (
    DEFAULT_OWNER,
    Adapter,
    Artifact,
    Base,
    EncodingSet,
    FileKind,
    JsonRecord,
    OwnerType,
    SectionKind,
    SectionOwner,
    UseCase,
)
from loramgr.sections.backends import BuildContext, OutFile, SectionJob
from loramgr.sections.backends.choose import get_backend
from loramgr.sections.layout import materialize_graphs, place, section_groups, select_adapters
from loramgr.validation import validate

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

log = logging.getLogger("loramgr")

#: bump when prepare/section layout changes, to invalidate every cache key.
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class BuildResult(JsonRecord):
    """What ``loramgr build --json`` prints."""

    build_id: int
    status: str
    backend: str
    share_adapters: bool
    base: str
    out_dir: str
    rebuilt: list[str]
    reused: list[str]
    artifacts: list[Artifact]


def _common(base: Base, backend_id: str, share: bool, groups: dict[str, list[str]]) -> dict[str, Any]:
    """What every job's cache key covers: the layout, the base's exact graphs and precision, the
    backend and its version, sharing and the section groups. The one recipe; each kind of job adds
    its owner's content (:func:`cache_key`, :func:`_use_case_jobs`)."""
    return {
        "layout": LAYOUT_VERSION,
        "base": base.fingerprint,
        "precision": base.precision,
        "backend": backend_id,
        "share": share,
        "groups": groups,
    }


def _digest(blob: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _members(adapters: tuple[Adapter, ...]) -> list[list[Any]]:
    """Adapters' content identities, as use-case keys hold them."""
    return [[m.sha256, m.config_sha256, m.lora_alpha, m.name, m.version] for m in adapters]


def cache_key(
    base: Base,
    adapter: Adapter | None,
    encodings: EncodingSet,
    backend_id: str,
    share: bool,
    groups: dict[str, list[str]],
) -> str:
    """An adapter's (or, with None, the default adapter's) job key."""
    owner = None if adapter is None else [*_members((adapter,))[0], encodings.to_aimet() if encodings else None]
    return _digest(_common(base, backend_id, share, groups) | {"adapter": owner})


@contextlib.contextmanager
def base_lock(reg: Registry, base: Base) -> Iterator[None]:
    """One build of a base at a time: a file lock on this machine, plus a PostgreSQL advisory lock
    (held on its own connection) when the registry is shared by several machines."""
    d = reg.settings.home / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"build-{base.ref}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            with advisory_lock(reg, f"loramgr-build:{base.ref}"):
                yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(reg: Registry, key: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock named by ``key`` (nothing on other databases)."""
    if reg.engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    with reg.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
            conn.commit()


class _Progress:
    """Build progress: one step per section job."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.p = Progress(total, "building sections", quiet)

    def __call__(self, job: SectionJob) -> None:
        self.p.advance(f"built {job.label}")

    def close(self) -> None:
        self.p.close()


@gc_paused
def build(
    reg: Registry,
    base_ref: str,
    refs: list[str] | None = None,
    *,
    all_: bool = False,
    backend: str = "ort",
    share_adapters: bool = False,
    jobs: int = 1,
    out_dir: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
    precision: str | None = None,
    **backend_opts: Any,
) -> BuildResult:
    """Build sections for the selected adapters of a base (and its default adapter)."""
    base = reg.base(base_ref)
    auto = not refs or all_  # no adapter named: the base's validated adapters, and new ones that fit
    chosen = select_adapters(reg, base, list(refs or []), all_, unvalidated=auto)
    records = reg.adapter_many(chosen)  # fetched once; validation and jobs share them
    for rec in records.values():
        if rec.status == "retired":
            raise ConflictError(f"adapter {rec.ref}", "is retired and is not built any more")
    # a build checks the group in memory; `loramgr validate` is what records validations
    report = validate(reg, chosen, base.ref, record=False, records=records, base=base)
    if not report.compatible and auto:
        validated = reg.validated_adapter_ids(base.id)
        fresh = {r for r in chosen if records[r].id not in validated and r not in (refs or [])}
        for drop in ({a.adapter for a in report.adapters if not a.compatible} & fresh, fresh):
            if not drop or report.compatible:
                continue
            for r in sorted(drop):
                logging.getLogger("loramgr").warning(
                    "adapter %s is not built for %s: it does not fit (see `loramgr validate`)", r, base.ref
                )
            chosen = [r for r in chosen if r not in drop]
            records = {r: records[r] for r in chosen}
            report = validate(reg, chosen, base.ref, record=False, records=records, base=base)
            if report.compatible:
                break
    if not report.compatible:
        raise IncompatibleError(
            ", ".join(report.incompatible) or base.ref,
            f"cannot build for {base.ref}: "
            + "; ".join(f"{p.code} ({p.subject})" for a in report.adapters for p in a.problems)[:500],
            details=report.to_json(),
        )
    if not chosen:
        raise NotFoundError(f"base {base.ref}", "has no adapter that fits", hint="`loramgr validate` says why")
    be = get_backend(backend, **backend_opts)
    be.check(base)  # e.g. the SDK version must equal the base's, before any build row exists
    out = Path(out_dir or reg.settings.home / "builds" / base.ref).absolute()
    if precision and precision != base.precision:
        if dtypes.int_bits(base.precision) or any(dtypes.int_bits(ap.dtype) for ap in base.attachment_points):
            raise IncompatibleError(f"--precision {precision}", f"base {base.ref} is {base.precision}")
        base = dataclasses.replace(base, precision=precision)
    adapters = [records[r] for r in chosen]
    encs = _encodings(reg, base, adapters)
    groups = section_groups(base, share_adapters)
    backend_id = be.version()
    all_jobs = [
        SectionJob(
            SectionOwner.adapter(a),
            SectionKind.of(OwnerType.ADAPTER, share_adapters),
            cache_key(base, a, encs[a.id], backend_id, share_adapters, groups),
            groups,
            encs[a.id],
            adapter=a,
        )
        for a in adapters
    ]
    all_jobs.append(
        SectionJob(
            DEFAULT_OWNER,
            SectionKind.DEFAULT,
            cache_key(base, None, EncodingSet(), backend_id, share_adapters, groups),
            groups,
        )
    )
    all_jobs += _use_case_jobs(reg, base, backend_id, share_adapters, groups)
    inputs_hash = hashlib.sha256("".join(sorted(j.cache_key for j in all_jobs)).encode()).hexdigest()
    with base_lock(reg, base):
        for dead_id, dead_out in reg.builds.recover_stale(base.id):
            shutil.rmtree(Path(dead_out) / f".loramgr-tmp-{dead_id}", ignore_errors=True)
        build_id = reg.builds.start(
            base.id,
            backend=backend,
            sdk_version=be.sdk_version,
            share_adapters=share_adapters,
            precision=base.precision,
            inputs_hash=inputs_hash,
            out_dir=str(out),
        )
        work = out / f".loramgr-tmp-{build_id}"
        log: list[str] = [f"build {build_id}: base {base.ref}, backend {backend_id}, share={share_adapters}"]
        try:
            reused, todo = _reuse(reg, all_jobs, out, force)
            if be.needs_adapter_for_default and todo and all(j.adapter is None for j in todo):
                first = next(j for j in all_jobs if j.adapter is not None)
                reused = [f for f in reused if f.cache_key != first.cache_key]
                todo.insert(0, first)
            graph_files = materialize_graphs(reg, base, out)
            ctx = BuildContext(
                base,
                {g: out / f.rel_path for f in graph_files if f.kind is FileKind.GRAPH for g in f.graphs},
                out,
                reg.encodings.get(base.id, None),
            )
            log.append(f"reused {len(reused)} file(s); building {len(todo)} job(s)")
            work.mkdir(parents=True, exist_ok=True)
            progress = _Progress(len(todo), quiet)
            try:
                new = be.build(ctx, todo, work, n_jobs=max(1, jobs), progress=progress) if todo else []
            finally:
                progress.close()
            log += be.log
            made: set[Path] = set()
            for f in (f for f in new if not f.placed):
                dest = out / f.rel_path
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                os.replace(f.produced_at(out, work), dest)
            files = reused + new + graph_files
            wl = write_weight_lists(base, out / "weight_list.txt")
            for p in sorted(set(wl.files.values())):
                files.append(
                    OutFile(
                        Path(p).relative_to(out).as_posix(),
                        FileKind.WEIGHT_LIST,
                        base.graph_names,
                        sha256=sha256_file(p),
                        size=Path(p).stat().st_size,
                    )
                )
            for f in files:
                f.path = str(out / f.rel_path)
            reg.builds.finish(build_id, [f.artifact() for f in files], "\n".join(log) + "\n")
        except BaseException as e:
            msg = e.message if isinstance(e, LoramgrError) else f"{type(e).__name__}: {e}"
            reg.builds.fail(build_id, "\n".join(log + be.log + [f"failed: {msg}"]) + "\n")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    done = reg.builds.get(build_id)
    return BuildResult(
        build_id,
        done.status,
        backend,
        share_adapters,
        base.ref,
        str(out),
        [j.label for j in todo],
        sorted({f.owner.label for f in reused if f.owner is not None}),
        list(done.artifacts),
    )


def _use_case_jobs(
    reg: Registry, base: Base, backend_id: str, share: bool, groups: dict[str, list[str]]
) -> list[SectionJob]:
    """One job per active use case of a base with alpha slots: its adapters' ranks concatenated in one
    section per graph group. A use case whose adapters were retired is left out (and says so). With
    integer LoRA, a group of use cases adds one job for the group's quantization section, and its
    members' keys cover every member (their shared scales depend on all of them)."""
    if not base.max_adapters:
        return []
    built: list[tuple[UseCase, tuple[Adapter, ...], EncodingSet, dict[str, Any]]] = []
    for uc in reg.use_cases.list(base.ref):
        if uc.status != "active":
            continue
        members = tuple(reg.adapter_many(uc.adapters).values())
        if any(m.status == "retired" for m in members):
            log.warning("use case %s is not built: an adapter of it is retired", uc.name)
            continue
        enc = dataclasses.replace(reg.encodings.get(base.id, None, use_case_id=uc.id), sources=())
        blob = _common(base, backend_id, share, groups) | {
            "use_case": [uc.name, uc.hot],
            "members": _members(members),
            "encodings": enc.to_aimet() if enc else None,
        }
        built.append((uc, members, enc, blob))
    quantized = dtypes.int_bits(base.precision) is not None
    by_group: dict[str, list[tuple[UseCase, tuple[Adapter, ...], EncodingSet, dict[str, Any]]]] = {}
    for b in built:
        if b[0].group and quantized:
            by_group.setdefault(b[0].group, []).append(b)
    jobs = []
    for uc, members, enc, blob in built:
        group = uc.group if uc.group in by_group else None
        everyone: tuple[tuple[Adapter, ...], ...] = ()
        if group:
            everyone = tuple(m for _, m, _, _ in by_group[group])
            blob = blob | {"group": [group, [b["members"] for _, _, _, b in by_group[group]]]}
        key = _digest(blob)
        jobs.append(
            SectionJob(
                SectionOwner.use_case(uc),
                SectionKind.of(OwnerType.USE_CASE, share),
                key,
                groups,
                enc,
                use_case=uc,
                members=members,
                group=group,
                group_members=everyone,
            )
        )
    int_inputs = any(dtypes.int_bits(ap.dtype) for ap in base.attachment_points)
    for group, items in sorted(by_group.items()) if int_inputs else ():
        key = _digest({"quant_section": group, "members": [b for _, _, _, b in items]})
        jobs.append(
            SectionJob(
                SectionOwner.group(group),
                SectionKind.GROUP_QUANT,
                key,
                groups,
                group=group,
                group_members=tuple(m for _, m, _, _ in items),
            )
        )
    return jobs


def _encodings(reg: Registry, base: Base, adapters: list[Adapter]) -> dict[int, EncodingSet]:
    """Each adapter's encodings (build inputs: quant_overrides, quantized sections). An integer build
    computes and stores weight encodings when calibration has not."""
    encs = reg.encodings.get_many(base.id, [a.id for a in adapters])
    bits = dtypes.int_bits(base.precision)
    for a in adapters:
        if bits and not encs[a.id].param:
            reg.encodings.save(base.id, a.id, weight_encodings(a, base, bits), "build")
            encs[a.id] = reg.encodings.get(base.id, a.id)
    return {k: dataclasses.replace(v, sources=()) for k, v in encs.items()}


def _reuse(reg: Registry, jobs: list[SectionJob], out: Path, force: bool) -> tuple[list[OutFile], list[SectionJob]]:
    """Split jobs into reusable files (same cache key, file still there at its size) and jobs to build."""
    if force:
        return [], jobs
    cached = reg.builds.reusable([j.cache_key for j in jobs])
    reused: list[OutFile] = []
    todo: list[SectionJob] = []
    for j in jobs:
        arts = cached.get(j.cache_key) or []
        files: list[OutFile] = []
        for a, rel in arts:
            src = Path(a.path)
            dest = out / rel
            # existence and size: a killed build's partial file never matches; content is fsck's job
            # (re-hashing every section on every build would make incremental builds O(all bytes))
            if not (src.is_file() and src.stat().st_size == a.size):
                files = []
                break
            if src != dest:
                place(src, dest, link=False)
            # the record's owner is the job's: an adapter's name may have changed since (a rename
            # keeps its content, so its cache key and files)
            owner = j.owner if a.owner is not None and a.owner.type is j.owner.type else a.owner
            files.append(OutFile(rel, a.kind, list(a.graphs), owner, j.cache_key, a.sha256, a.size))
        if files and len(files) == len(arts):
            reused += files
        else:
            todo.append(j)
    return reused, todo
