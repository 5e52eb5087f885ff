"""Build and artifact records: start/finish/fail a build, find reusable artifacts, recover builds
whose process died (a killed build never leaves artifacts recorded as done)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from loramgr.errors import NotFoundError
from loramgr.registry.models import Adapter, Artifact, BaseModel, Build, utcnow


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(reg: Any, base_id: int, *, holding_lock: bool = True) -> list[tuple[int, str]]:
    """Mark this base's ``running`` builds as failed when their process is gone (or, while we hold
    the base's build lock, unconditionally: no other build of it can be running)."""

    def write(s: Session) -> list[tuple[int, str]]:
        ids = []
        for b in s.scalars(select(Build).where(Build.base_id == base_id, Build.status == "running")):
            if holding_lock or not _alive(b.pid):
                b.status, b.finished_at = "failed", utcnow()
                b.log = (b.log or "") + "\nrecovered: the build process died before finishing\n"
                reg.event(s, "build_recovered", f"build:{b.id}", pid=b.pid)
                ids.append((b.id, b.out_dir))
        return ids

    return reg.retrying(write)


def start_build(reg: Any, base_id: int, **fields: Any) -> int:
    def write(s: Session) -> int:
        b = Build(base_id=base_id, status="running", pid=os.getpid(), **fields)
        s.add(b)
        s.flush()
        base = s.get(BaseModel, base_id)
        reg.event(s, "build_start", f"build:{b.id}", base=f"{base.name}@{base.version}" if base else None,
                  backend=fields.get("backend"), share_adapters=fields.get("share_adapters"))
        return b.id

    return reg.retrying(write)


def finish_build(reg: Any, build_id: int, files: Iterable[Any], log: str) -> None:
    """Record every artifact and mark the build done in one transaction."""
    files = list(files)

    def write(s: Session) -> None:
        b = s.get(Build, build_id)
        assert b is not None
        for f in files:
            s.add(Artifact(build_id=build_id, adapter_id=f.adapter_id, graphs=f.graphs, kind=f.kind,
                           cache_key=f.cache_key, sha256=f.sha256, size=f.size, path=f.path))
        for aid in sorted({f.adapter_id for f in files if f.adapter_id is not None}):
            a = s.get(Adapter, aid)
            if a is not None and a.status in ("registered", "validated"):
                reg.event(s, "status", f"adapter:{a.name}@{a.version}", old=a.status, new="built", build=build_id)
                a.status = "built"
        b.status, b.finished_at, b.log = "done", utcnow(), log
        reg.event(s, "build_done", f"build:{build_id}", artifacts=len(files))

    reg.retrying(write)


def fail_build(reg: Any, build_id: int, log: str) -> None:
    def write(s: Session) -> None:
        b = s.get(Build, build_id)
        if b is not None:
            b.status, b.finished_at, b.log = "failed", utcnow(), log
            reg.event(s, "build_failed", f"build:{build_id}", reason=log.strip().splitlines()[-1:] or "")

    reg.retrying(write)


def reusable(reg: Any, cache_keys: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Artifacts of finished builds by cache key (newest build first)."""
    keys = sorted(set(cache_keys))
    out: dict[str, list[dict[str, Any]]] = {}
    if not keys:
        return out
    with reg.session() as s:
        q = (select(Artifact, Build.id, Build.out_dir).join(Build)
             .where(Artifact.cache_key.in_(keys), Build.status == "done").order_by(Build.id.desc(), Artifact.id))
        seen_build: dict[str, int] = {}
        for art, bid, out_dir in s.execute(q):
            if seen_build.setdefault(art.cache_key, bid) != bid:
                continue
            rel = os.path.relpath(art.path, out_dir)
            if rel.startswith("..") or os.path.isabs(rel):
                continue  # not under its build's directory: never copy from or to outside it
            out.setdefault(art.cache_key, []).append(artifact_record(art) | {"rel_path": Path(rel).as_posix()})
    return out


def artifact_record(a: Artifact, adapter_name: str | None = None) -> dict[str, Any]:
    return {"adapter_id": a.adapter_id, "adapter": adapter_name, "graphs": a.graphs, "kind": a.kind,
            "path": a.path, "sha256": a.sha256, "size": a.size, "cache_key": a.cache_key}


def build_record(reg: Any, build_id: int | None = None, *, base_id: int | None = None) -> dict[str, Any]:
    """A build with its artifacts: by id, or the newest done build of a base."""
    with reg.session() as s:
        if build_id is not None:
            b = s.get(Build, build_id)
        else:
            b = s.scalar(select(Build).where(Build.base_id == base_id, Build.status == "done")
                         .order_by(Build.id.desc()).limit(1))
        if b is None:
            raise NotFoundError(f"build {build_id if build_id is not None else '(newest)'}", "no such finished build",
                                hint="run `loramgr build` first")
        names = {a.id: f"{a.name}" for a in s.scalars(select(Adapter).where(
            Adapter.id.in_({x.adapter_id for x in b.artifacts if x.adapter_id})))}
        vers = {a.id: a.version for a in s.scalars(select(Adapter).where(Adapter.id.in_(names)))}
        arts = [artifact_record(a, names.get(a.adapter_id)) | {"adapter_version": vers.get(a.adapter_id)}
                for a in b.artifacts]
        return {"build_id": b.id, "base_id": b.base_id, "status": b.status, "backend": b.backend,
                "sdk_version": b.sdk_version, "share_adapters": b.share_adapters, "precision": b.precision,
                "out_dir": b.out_dir, "inputs_hash": b.inputs_hash, "artifacts": arts, "log": b.log}
