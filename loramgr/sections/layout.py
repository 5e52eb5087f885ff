"""What a build's output looks like, shared by build, calibrate and verify: which graphs a section
serves, which adapters a base builds, and the base's graphs placed beside the sections."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramgr.errors import IntegrityError, NotFoundError
from loramgr.records import Artifact, ArtifactKind, Base, FileKind, Graph, SectionOwner

if TYPE_CHECKING:
    from loramgr.registry.api import Registry


@dataclass
class OutFile:
    """A file a backend (or the pipeline) produced, relative to the output directory; ``sha256``,
    ``size`` and ``path`` are filled once the file is final."""

    rel_path: str
    kind: ArtifactKind
    graphs: list[str]
    owner: SectionOwner | None = None  # every section has one; an SDK tool's file made for one owner too
    cache_key: str | None = None
    sha256: str = ""
    size: int = 0
    path: str = ""  # absolute, set once the file is in its final place
    extra: dict[str, Any] = field(default_factory=dict)
    placed: bool = False  # already in the output directory (an SDK tool's working file), not in the work one
    staged: str = ""  # its name in the work directory when not ``rel_path`` (flat: no directory per section)

    def produced_at(self, out: Path, work: Path) -> Path:
        """Where the backend left the file: in place under ``out``, or in the build's work directory
        (under its staged name, if it has one) until the pipeline moves it to ``out / rel_path``."""
        return out / self.rel_path if self.placed else work / (self.staged or self.rel_path)

    def artifact(self) -> Artifact:
        """The record the registry keeps of this file (once it is final)."""
        return Artifact(self.kind, tuple(self.graphs), self.path, self.sha256, self.size, self.cache_key, self.owner)


def section_groups(base: Base, share: bool) -> dict[str, list[str]]:
    """Section name -> graphs. Unshared: one per graph. Shared (super adapters): graphs with the same
    attachment-point names form one group (the prefill/decode pair); parts stay separate."""
    if not share:
        return {g: [g] for g in base.graph_names}
    by_set: dict[tuple[str, ...], list[str]] = {}
    for g in base.graph_names:
        key = tuple(sorted(ap.module_path for ap in base.points_of(g)))
        by_set.setdefault(key, []).append(g)
    return {"+".join(gs): gs for gs in by_set.values()}


def select_adapters(reg: Registry, base: Base, refs: list[str], all_: bool, *, unvalidated: bool = False) -> list[str]:
    """The adapters a build (or calibration) covers: the named ones, or with ``all_`` / none named
    every validated, non-retired adapter of the base. ``unvalidated``: also the adapters never
    validated yet (status ``registered``) unless registered for another base (``--base``); the caller
    checks them and leaves out those that do not fit (so ``register`` then ``build`` works)."""
    if refs and not all_:
        return list(dict.fromkeys(refs))
    validated = reg.validated_adapter_ids(base.id)
    listing = reg.adapters()
    chosen = [a.ref for a in listing if a.id in validated and a.status != "retired"]
    if unvalidated:
        others = {n for b in reg.bases() if b.id != base.id for n in (b.name, b.ref)} - {base.name}
        chosen += [
            a.ref for a in listing if a.status == "registered" and a.id not in validated and a.base_hint not in others
        ]
    if all_:
        chosen = list(dict.fromkeys(list(refs) + chosen))
    if not chosen:
        raise NotFoundError(
            f"base {base.ref}",
            "has no validated adapters to build",
            hint=f"run `loramgr validate ADAPTER --base {base.ref}` first",
        )
    return chosen


def place(src: Path, dest: Path, *, link: bool) -> None:
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


def graph_files(g: Graph) -> list[tuple[str, str, int]]:
    """A graph's files as (name, sha256, size): the graph file first, then its external data."""
    return [(g.file_name, g.sha256, g.size)] + [(e.location, e.sha256, e.size) for e in g.external_data]


def graph_dirs(graphs: Sequence[Graph]) -> dict[str, str]:
    """Each graph's directory in the output, relative to it. Graphs share ``base/`` unless a file name
    clashes: a prefill and a decode graph exported together read the same external data files, and
    in one directory one copy of each serves both (a Llama-3.2-1B base: 6.0 GB on disk, not 12.0 GB;
    hard links cannot do it, see :func:`materialize_graphs`). A graph whose file names are taken there
    by different content (or whose graph file name is taken at all) gets ``base/<graph>/``."""
    taken: dict[str, str] = {}  # file name in base/ -> sha256 of its content
    dirs: dict[str, str] = {}
    for g in graphs:
        items = {name: sha for name, sha, _ in graph_files(g)}
        if g.file_name not in taken and all(taken.get(name, sha) == sha for name, sha in items.items()):
            taken.update(items)
            dirs[g.name] = "base"
        else:
            dirs[g.name] = f"base/{g.name}"
    return dirs


def materialize_graphs(reg: Registry, base: Base, out: Path) -> list[OutFile]:
    """Base graphs (and their external data) next to the sections, so that a plan and a bundle are
    self-contained; a data file that several graphs read is placed once (:func:`graph_dirs`). Copies,
    not hard links: the ``onnx`` package (and so the QAIRT converter and importer) refuses external
    data files with several hard links ("potential hardlink attack")."""
    dirs = graph_dirs(base.graphs)
    files: dict[str, OutFile] = {}
    for g in base.graphs:
        for name, sha, size in graph_files(g):
            rel = f"{dirs[g.name]}/{name}"
            if rel in files:  # the same content, placed for an earlier graph (graph_dirs checked)
                if g.name not in files[rel].graphs:
                    files[rel].graphs.append(g.name)
                continue
            dest = out / rel
            if not (dest.is_file() and dest.stat().st_size == size):  # content: fsck re-hashes artifacts
                src = reg.store.path_for(sha)
                if not src.is_file():
                    raise IntegrityError(
                        str(src), f"store object of graph {g.name} is missing", hint="run `loramgr fsck`"
                    )
                place(src, dest, link=False)
            kind = FileKind.GRAPH if name == g.file_name else FileKind.GRAPH_DATA
            files[rel] = OutFile(rel, kind, [g.name], sha256=sha, size=size)
    return list(files.values())
