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
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from loramgr.build.backends import OutFile, SectionJob, get_backend
from loramgr.errors import IncompatibleError, IntegrityError, LoramgrError, NotFoundError
from loramgr.registry import builds as rb
from loramgr.store import sha256_file

#: bump when prepare/section layout changes, to invalidate every cache key.
LAYOUT_VERSION = 1


def section_groups(base: dict[str, Any], share: bool) -> dict[str, list[str]]:
    """Section name -> graphs. Unshared: one per graph. Shared (super adapters): graphs with the same
    attachment-point names form one group (the prefill/decode pair); parts stay separate."""
    if not share:
        return {g: [g] for g in base["graphs"]}
    by_set: dict[tuple[str, ...], list[str]] = {}
    for g in base["graphs"]:
        key = tuple(sorted(ap["module_path"] for ap in base["attachment_point_list"] if g in ap["graphs"]))
        by_set.setdefault(key, []).append(g)
    return {"+".join(gs): gs for gs in by_set.values()}


def cache_key(base: dict[str, Any], adapter: dict[str, Any] | None, backend_id: str, share: bool,
              groups: dict[str, list[str]]) -> str:
    blob = {"layout": LAYOUT_VERSION, "base": base["fingerprint"], "precision": base["precision"],
            "backend": backend_id, "share": share, "groups": groups,
            "adapter": None if adapter is None else [adapter["sha256"], adapter.get("config_sha256"),
                                                      adapter["lora_alpha"], adapter["name"], adapter["version"],
                                                      adapter.get("encodings")]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def base_lock(reg: Any, base: dict[str, Any]) -> Iterator[None]:
    """One build of a base at a time: a file lock on this machine, plus a PostgreSQL advisory lock
    (held on its own connection) when the registry is shared by several machines."""
    d = reg.settings.home / "locks"
    d.mkdir(parents=True, exist_ok=True)
    key = f"{base['name']}@{base['version']}"
    with open(d / f"build-{key}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if reg.engine.dialect.name == "postgresql":
                from sqlalchemy import text

                lock_id = int.from_bytes(hashlib.sha256(f"loramgr-build:{key}".encode()).digest()[:8], "big", signed=True)
                with reg.engine.connect() as conn:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
                    conn.commit()
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                        conn.commit()
            else:
                yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def select_adapters(reg: Any, base: dict[str, Any], refs: list[str], all_: bool) -> list[str]:
    if refs and not all_:
        return list(dict.fromkeys(refs))
    validated = reg.validated_adapter_ids(base["id"])
    chosen = [a["ref"] for a in reg.adapters() if a["id"] in validated and a["status"] != "retired"]
    if all_:
        chosen = list(dict.fromkeys(list(refs) + chosen))
    if not chosen:
        raise NotFoundError(f"base {base['ref']}", "has no validated adapters to build",
                            hint=f"run `loramgr validate ADAPTER --base {base['ref']}` first")
    return chosen


def _place(src: Path, dest: Path, *, link: bool) -> None:
    """Put a copy (or, with ``link``, a hard link when possible) of ``src`` at ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    linked = False
    if link:
        try:
            os.link(src, tmp)
            linked = True
        except OSError:  # another filesystem, or links not allowed: copy instead
            pass
    if not linked:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def materialize_graphs(reg: Any, base: dict[str, Any], out: Path) -> list[OutFile]:
    """Base graphs (and their external data) next to the sections, so that a plan and a bundle are
    self-contained. Copies, not hard links: the ``onnx`` package (and so the QAIRT converter and
    importer) refuses external data files with several hard links ("potential hardlink attack")."""
    files = []
    for g in base["graph_list"]:
        items = [(g["file_name"], g["sha256"], g["size"])] + [(e["location"], e["sha256"], e["size"])
                                                            for e in g["external_data"]]
        for name, sha, size in items:
            rel = f"base/{g['name']}/{name}"
            dest = out / rel
            if not (dest.is_file() and dest.stat().st_size == size):  # content: fsck re-hashes artifacts
                src = reg.store.path_for(sha)
                if not src.is_file():
                    raise IntegrityError(str(src), f"store object of graph {g['name']} is missing",
                                         hint="run `loramgr fsck`")
                _place(src, dest, link=False)
            kind = "graph" if name == g["file_name"] else "graph_data"
            files.append(OutFile(rel, kind, [g["name"]], sha256=sha, size=size))
    return files


class _Progress:
    """Build progress: one step per section job."""

    def __init__(self, total: int, quiet: bool) -> None:
        from loramgr.progress import Progress

        self.p = Progress(total, "building sections", quiet)

    def __call__(self, job: SectionJob) -> None:
        self.p.advance(f"built {job.adapter['ref'] if job.adapter else 'default adapter'}")

    def close(self) -> None:
        self.p.close()


def build(reg: Any, base_ref: str, refs: list[str] | None = None, *, all_: bool = False, backend: str = "ort",
          share_adapters: bool = False, jobs: int = 1, out_dir: str | Path | None = None,
          force: bool = False, quiet: bool = False, precision: str | None = None,
          **backend_opts: Any) -> dict[str, Any]:
    """Build sections for the selected adapters of a base; returns the ``build --json`` object."""
    from loramgr.validate import validate
    from loramgr.weightlist import write_weight_lists

    from loramgr.errors import ConflictError

    base = reg.base(base_ref)
    chosen = select_adapters(reg, base, list(refs or []), all_)
    records = reg.adapter_many(chosen)  # fetched once; validation and jobs share them
    for rec in records.values():
        if rec["status"] == "retired":
            raise ConflictError(f"adapter {rec['ref']}", "is retired and is not built any more")
    # a build checks the group in memory; `loramgr validate` is what records validations
    report = validate(reg, chosen, base["ref"], record=False, records=records)
    if not report["compatible"]:
        bad = [a["adapter"] for a in report["adapters"] if not a["compatible"]]
        raise IncompatibleError(", ".join(bad) or base["ref"], f"cannot build for {base['ref']}: "
                                + "; ".join(f"{p['code']} ({p['subject']})" for a in report["adapters"]
                                            for p in a["problems"])[:500], details=report)
    be = get_backend(backend, **backend_opts)
    if hasattr(be, "check"):
        be.check(base)  # e.g. the SDK version must equal the base's, before any build row exists
    out = Path(out_dir or reg.settings.home / "builds" / f"{base['name']}@{base['version']}").absolute()
    if precision and precision != base["precision"]:
        if base["precision"] in ("int8", "int16") or any(ap["dtype"] in ("int8", "int16")
                                                         for ap in base["attachment_point_list"]):
            raise IncompatibleError(f"--precision {precision}", f"base {base['ref']} is {base['precision']}")
        base = base | {"precision": precision}
    from loramgr.registry.encodings import load_many

    encs = load_many(reg, base["id"], [records[r]["id"] for r in chosen])
    adapters = [_with_encodings(reg, base, records[r], encs[records[r]["id"]]) for r in chosen]
    groups = section_groups(base, share_adapters)
    kind = "super_section" if share_adapters else "section"
    backend_id = be.version()
    all_jobs = [SectionJob(a, cache_key(base, a, backend_id, share_adapters, groups), groups, kind, share_adapters)
                for a in adapters]
    all_jobs.append(SectionJob(None, cache_key(base, None, backend_id, share_adapters, groups), groups,
                               "default_section", share_adapters))
    inputs_hash = hashlib.sha256("".join(sorted(j.cache_key for j in all_jobs)).encode()).hexdigest()
    with base_lock(reg, base):
        for dead_id, dead_out in rb.recover_stale(reg, base["id"]):
            shutil.rmtree(Path(dead_out) / f".loramgr-tmp-{dead_id}", ignore_errors=True)
        build_id = rb.start_build(reg, base["id"], backend=backend, sdk_version=getattr(be, "sdk_version", None),
                                  share_adapters=share_adapters, precision=base["precision"],
                                  inputs_hash=inputs_hash, out_dir=str(out))
        work = out / f".loramgr-tmp-{build_id}"
        log: list[str] = [f"build {build_id}: base {base['ref']}, backend {backend_id}, share={share_adapters}"]
        try:
            reused, todo = _reuse(reg, all_jobs, out, force)
            if getattr(be, "needs_adapter_for_default", False) and todo and all(j.adapter is None for j in todo):
                first = next(j for j in all_jobs if j.adapter is not None)
                reused = [f for f in reused if f.cache_key != first.cache_key]
                todo.insert(0, first)
            graph_files = materialize_graphs(reg, base, out)
            base = base | {"graph_paths": {g: str(out / f.rel_path) for f in graph_files if f.kind == "graph"
                                           for g in f.graphs}}
            log.append(f"reused {len(reused)} file(s); building {len(todo)} job(s)")
            work.mkdir(parents=True, exist_ok=True)
            progress = _Progress(len(todo), quiet)
            try:
                new = be.build(base, todo, work, n_jobs=max(1, jobs), progress=progress) if todo else []
            finally:
                progress.close()
            log += getattr(be, "log", [])
            for f in new:
                dest = out / f.rel_path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / f.rel_path, dest)
            files = reused + new + graph_files
            wl = write_weight_lists(base, out / "weight_list.txt")
            for p in sorted(set(wl["files"].values())):
                files.append(OutFile(Path(p).relative_to(out).as_posix(), "weight_list", list(base["graphs"]),
                                     sha256=sha256_file(p), size=Path(p).stat().st_size))
            files += [f for f in getattr(be, "extra_files", lambda o: [])(out)]
            for f in files:
                f.path = str(out / f.rel_path)
            rb.finish_build(reg, build_id, files, "\n".join(log) + "\n")
        except BaseException as e:
            msg = e.message if isinstance(e, LoramgrError) else f"{type(e).__name__}: {e}"
            rb.fail_build(reg, build_id, "\n".join(log + getattr(be, "log", []) + [f"failed: {msg}"]) + "\n")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    rec = rb.build_record(reg, build_id)
    return {"build_id": build_id, "status": rec["status"], "backend": backend, "share_adapters": share_adapters,
            "base": base["ref"], "out_dir": str(out), "rebuilt": [j.adapter["ref"] if j.adapter else "default"
                                                                  for j in todo],
            "reused": sorted({f.adapter or "default" for f in reused}),
            "artifacts": [{"adapter": a["adapter"], "graphs": a["graphs"], "kind": a["kind"], "path": a["path"],
                           "sha256": a["sha256"], "size": a["size"]} for a in rec["artifacts"]]}


def _with_encodings(reg: Any, base: dict[str, Any], adapter: dict[str, Any], enc: dict[str, Any]) -> dict[str, Any]:
    """Attach the adapter's encodings (they are build inputs: quant_overrides, quantized sections).
    An integer build computes and stores weight encodings when calibration has not."""
    from loramgr.build.inputs import INT_BITS, weight_encodings
    from loramgr.registry.encodings import store

    bits = INT_BITS.get(base["precision"])
    if bits and not (enc.get("param_encodings")):
        store(reg, base["id"], adapter["id"], weight_encodings(adapter, base, bits), "build")
        enc = reg.adapter_encodings(adapter["id"], base["id"])
    enc.pop("sources", None)
    return adapter | ({"encodings": enc} if enc else {})


def _reuse(reg: Any, jobs: list[SectionJob], out: Path, force: bool) -> tuple[list[OutFile], list[SectionJob]]:
    """Split jobs into reusable files (same cache key, file still there at its size) and jobs to build."""
    if force:
        return [], jobs
    cached = rb.reusable(reg, [j.cache_key for j in jobs])
    reused: list[OutFile] = []
    todo: list[SectionJob] = []
    for j in jobs:
        arts = cached.get(j.cache_key) or []
        files: list[OutFile] = []
        for a in arts:
            src = Path(a["path"])
            rel = a["rel_path"]
            dest = out / rel
            # existence and size: a killed build's partial file never matches; content is fsck's job
            # (re-hashing every section on every build would make incremental builds O(all bytes))
            if not (src.is_file() and src.stat().st_size == a["size"]):
                files = []
                break
            if src != dest:
                _place(src, dest, link=False)
            files.append(OutFile(rel, a["kind"], a["graphs"], a["adapter_id"], j.adapter["name"] if j.adapter else None,
                                 j.cache_key, a["sha256"], a["size"]))
        if files and len(files) == len(arts):
            reused += files
        else:
            todo.append(j)
    return reused, todo
