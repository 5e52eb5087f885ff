"""Build and artifact rows (``reg.builds``): start/finish/fail a build, find reusable artifacts,
recover builds whose process died (a killed build never leaves artifacts recorded as done)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from loramgr.errors import NotFoundError
from loramgr.records import Artifact, Build, OwnerType
from loramgr.registry import rows
from loramgr.registry.models import AdapterRow, ArtifactRow, BaseRow, BuildRow, UseCaseRow, utcnow

if TYPE_CHECKING:
    from loramgr.registry.core import RegistryCore


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


class Builds:
    """``reg.builds``: the build and artifact rows of a registry."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg

    def recover_stale(self, base_id: int, *, holding_lock: bool = True) -> list[tuple[int, str]]:
        """Mark this base's ``running`` builds as failed when their process is gone (or, while we hold
        the base's build lock, unconditionally: no other build of it can be running)."""

        def write(s: Session) -> list[tuple[int, str]]:
            ids = []
            for b in s.scalars(select(BuildRow).where(BuildRow.base_id == base_id, BuildRow.status == "running")):
                if holding_lock or not _alive(b.pid):
                    b.status, b.finished_at = "failed", utcnow()
                    b.log = (b.log or "") + "\nrecovered: the build process died before finishing\n"
                    self.reg.event(s, "build_recovered", f"build:{b.id}", pid=b.pid)
                    ids.append((b.id, b.out_dir))
            return ids

        return self.reg.retrying(write)

    def start(
        self,
        base_id: int,
        *,
        backend: str,
        sdk_version: str | None,
        share_adapters: bool,
        precision: str,
        inputs_hash: str,
        out_dir: str,
    ) -> int:
        def write(s: Session) -> int:
            b = BuildRow(
                base_id=base_id,
                status="running",
                pid=os.getpid(),
                backend=backend,
                sdk_version=sdk_version,
                share_adapters=share_adapters,
                precision=precision,
                inputs_hash=inputs_hash,
                out_dir=out_dir,
            )
            s.add(b)
            s.flush()
            base = s.get(BaseRow, base_id)
            self.reg.event(
                s,
                "build_start",
                f"build:{b.id}",
                base=f"{base.name}@{base.version}" if base else None,
                backend=backend,
                share_adapters=share_adapters,
            )
            return b.id

        return self.reg.retrying(write)

    def finish(self, build_id: int, files: Iterable[Artifact], log: str) -> None:
        """Record every artifact and mark the build done in one transaction."""
        files = list(files)

        def write(s: Session) -> None:
            b = s.get(BuildRow, build_id)
            if b is None:
                raise NotFoundError(f"build {build_id}", "was removed while it ran")
            if files:  # one executemany, not an ORM object per file (a build lists every adapter's files)
                s.execute(
                    insert(ArtifactRow),
                    [
                        {
                            "build_id": build_id,
                            "adapter_id": f.adapter_id,
                            "use_case_id": f.use_case_id,
                            "group_name": f.owned_by(OwnerType.GROUP),
                            "graphs": list(f.graphs),
                            "kind": f.kind.value,
                            "cache_key": f.cache_key,
                            "sha256": f.sha256,
                            "size": f.size,
                            "path": f.path,
                        }
                        for f in files
                    ],
                )
            ids = sorted({f.adapter_id for f in files if f.adapter_id is not None})
            for a in s.scalars(select(AdapterRow).where(AdapterRow.id.in_(ids)).order_by(AdapterRow.id)):
                if a.status in ("registered", "validated"):
                    self.reg.event(
                        s, "status", f"adapter:{a.name}@{a.version}", old=a.status, new="built", build=build_id
                    )
                    a.status = "built"
            b.status, b.finished_at, b.log = "done", utcnow(), log
            self.reg.event(s, "build_done", f"build:{build_id}", artifacts=len(files))

        self.reg.retrying(write)

    def fail(self, build_id: int, log: str) -> None:
        def write(s: Session) -> None:
            b = s.get(BuildRow, build_id)
            if b is not None:
                b.status, b.finished_at, b.log = "failed", utcnow(), log
                self.reg.event(s, "build_failed", f"build:{build_id}", reason=log.strip().splitlines()[-1:] or "")

        self.reg.retrying(write)

    def reusable(self, cache_keys: Iterable[str]) -> dict[str, list[tuple[Artifact, str]]]:
        """(artifact, path relative to its build's directory) of finished builds by cache key, newest
        build first. Artifacts not under their build's directory are never offered."""
        keys = sorted(set(cache_keys))
        out: dict[str, list[tuple[Artifact, str]]] = {}
        if not keys:
            return out
        a = ArtifactRow
        cols = (a.kind, a.graphs, a.path, a.sha256, a.size, a.adapter_id, a.cache_key, a.use_case_id, a.group_name)
        with self.reg.session() as s:
            # only the newest done build's files per key, as plain rows: a base rebuilt many times has
            # every key in every build, and ORM objects for all of them were most of a rebuild's cost
            newest = (
                select(a.cache_key, func.max(BuildRow.id).label("bid"))
                .join(BuildRow)
                .where(a.cache_key.in_(keys), BuildRow.status == "done")
                .group_by(a.cache_key)
                .subquery()
            )
            q = (
                select(*cols, BuildRow.out_dir)
                .join(BuildRow, a.build_id == BuildRow.id)
                .join(newest, (a.cache_key == newest.c.cache_key) & (a.build_id == newest.c.bid))
                .order_by(a.id)
            )
            for art in s.execute(q):
                rel = os.path.relpath(art.path, art.out_dir)
                if rel.startswith("..") or os.path.isabs(rel):
                    continue  # not under its build's directory: never copy from or to outside it
                out.setdefault(art.cache_key, []).append((rows.artifact(art), Path(rel).as_posix()))
        return out

    def get(self, build_id: int | None = None, *, base_id: int | None = None) -> Build:
        """A build with its artifacts: by id, or the newest done build of a base."""
        with self.reg.session() as s:
            if build_id is not None:
                b = s.get(BuildRow, build_id)
            else:
                b = s.scalar(
                    select(BuildRow)
                    .where(BuildRow.base_id == base_id, BuildRow.status == "done")
                    .order_by(BuildRow.id.desc())
                    .limit(1)
                )
            if b is None:
                raise NotFoundError(
                    f"build {build_id if build_id is not None else '(newest)'}",
                    "no such finished build",
                    hint="run `loramgr build` first",
                )
            ids = {x.adapter_id for x in b.artifacts if x.adapter_id}
            names: dict[int, tuple[str, str]] = {
                a.id: (a.name, a.version) for a in s.scalars(select(AdapterRow).where(AdapterRow.id.in_(ids)))
            }
            uc_names = {
                u.id: u.name
                for u in s.scalars(select(UseCaseRow).where(UseCaseRow.id.in_({x.use_case_id for x in b.artifacts})))
            }
            arts = tuple(
                rows.artifact(
                    a,
                    names[a.adapter_id][0] if a.adapter_id in names else None,
                    names[a.adapter_id][1] if a.adapter_id in names else None,
                    uc_names.get(a.use_case_id or 0),
                )
                for a in b.artifacts
            )
            return Build(
                id=b.id,
                base_id=b.base_id,
                status=b.status,
                backend=b.backend,
                sdk_version=b.sdk_version,
                share_adapters=b.share_adapters,
                precision=b.precision,
                out_dir=b.out_dir,
                inputs_hash=b.inputs_hash,
                artifacts=arts,
                log=b.log,
            )
