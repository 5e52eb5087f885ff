"""Build backends. A backend turns prepared adapters into section files in a work directory.

This package's ``__init__`` is only the contract every backend imports; the backend is chosen by
name in :mod:`loramgr.sections.backends.choose`. :class:`Backend` is the whole contract the pipeline
(:mod:`loramgr.sections.pipeline`) relies on: no member is probed for with ``hasattr``; a backend
without something to say holds the neutral value (no SDK version, an empty log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loramgr.records import Adapter, Base, EncodingSet, SectionKind, SectionOwner, UseCase
from loramgr.sections.layout import OutFile as OutFile  # the contract's file record, kept with the output layout


@dataclass(frozen=True)
class SectionJob:
    """One owner's sections to build: an adapter's, the default adapter's, a use case's (its adapters'
    ranks concatenated, slot order) or a group's quantization-only section."""

    owner: SectionOwner
    kind: SectionKind
    cache_key: str
    groups: dict[str, list[str]]  # section name -> graphs it serves
    encodings: EncodingSet = field(default_factory=EncodingSet)  # build inputs: quant_overrides, int sections
    adapter: Adapter | None = None  # an adapter's job: its record
    use_case: UseCase | None = None  # a use case's job: its record
    members: tuple[Adapter, ...] = ()  # the use case's adapters, by slot
    group: str | None = None  # the group a use case's (or a group's own) sections belong to
    group_members: tuple[tuple[Adapter, ...], ...] = ()  # every use case of the group: its adapters

    @property
    def share(self) -> bool:
        """Super sections: one section per group of graphs (``build --share-adapters``)."""
        return self.kind.shared or any(len(g) > 1 for g in self.groups.values())

    @property
    def label(self) -> str:
        return self.owner.label

    def out_file(self, rel_path: str, graphs: list[str], **kw: Any) -> OutFile:
        """A section file of this job (its kind, owner and cache key)."""
        return OutFile(rel_path, self.kind, list(graphs), self.owner, self.cache_key, **kw)


@dataclass(frozen=True)
class BuildContext:
    """What every backend gets besides the jobs: the base as built (its precision may be overridden
    by ``build --precision``), where the base's graphs were materialized in the output directory, and
    that directory (the qairt backend runs the SDK tools in its ``qairt/``, so that the build log's
    commands can be re-run there by hand after the build)."""

    base: Base
    graph_paths: dict[str, Path]
    out: Path
    #: the base's own stored encodings (the default adapter's): a quantized target takes their ranges
    base_encodings: EncodingSet = field(default_factory=EncodingSet)


Progress = Callable[[SectionJob], None]


class Backend(Protocol):
    """A section builder (``ort``: the open reference; ``qairt``: the SDK tools)."""

    name: str
    #: the tool writes the default adapter's section only alongside at least one adapter
    needs_adapter_for_default: bool
    #: SDK version recorded on the build row (None: not an SDK backend)
    sdk_version: str | None
    #: lines for the build log (tool invocations, their output tails)
    log: list[str]

    def version(self) -> str:
        """Identity of the backend for cache keys: a change here rebuilds everything."""

    def check(self, base: Base) -> None:
        """Refuse a base this backend cannot build for, before any build row exists."""

    def build(
        self, ctx: BuildContext, jobs: list[SectionJob], work: Path, *, n_jobs: int, progress: Progress
    ) -> list[OutFile]:
        """Write the jobs' sections under ``work``; return them (paths relative to ``work``)."""
