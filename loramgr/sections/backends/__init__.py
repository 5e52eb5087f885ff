"""Build backends. A backend turns prepared adapters into section files in a work directory.

:class:`Backend` is the whole contract the pipeline (:mod:`loramgr.sections.pipeline`) relies on:
no member is probed for with ``hasattr``; a backend without something to say holds the neutral
value (no SDK version, an empty log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loramgr.records import Adapter, Base, EncodingSet, UseCase
from loramgr.sections.layout import OutFile as OutFile  # the contract's file record, kept with the output layout


@dataclass(frozen=True)
class SectionJob:
    """One adapter (or the default adapter, ``adapter is None``) to turn into sections."""

    adapter: Adapter | None
    cache_key: str
    groups: dict[str, list[str]]  # section name -> graphs it serves
    kind: str  # "section" | "super_section" | "default_section"
    share: bool = False  # super adapters: one section per group of graphs
    encodings: EncodingSet = field(default_factory=EncodingSet)  # build inputs: quant_overrides, int sections
    use_case: UseCase | None = None  # a use case's job: its adapters' ranks concatenated, slot order
    members: tuple[Adapter, ...] = ()  # the use case's adapters, by slot
    group: str | None = None  # a grouped use case's group, or the group of a "group_quant_section" job
    group_members: tuple[tuple[Adapter, ...], ...] = ()  # every use case of the group: its adapters

    @property
    def label(self) -> str:
        if self.use_case is not None:
            return f"use case {self.use_case.name}"
        if self.group is not None:
            return f"group {self.group}"
        return self.adapter.ref if self.adapter else "default adapter"


@dataclass(frozen=True)
class BuildContext:
    """What every backend gets besides the jobs: the base as built (its precision may be overridden
    by ``build --precision``), where the base's graphs were materialized in the output directory, and
    that directory (the qairt backend runs the SDK tools in its ``qairt/``, so that the build log's
    commands can be re-run there by hand after the build)."""

    base: Base
    graph_paths: dict[str, Path]
    out: Path


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


def get_backend(name: str, **opts: Any) -> Backend:
    if name == "ort":
        from loramgr.sections.backends.ort import OrtBackend

        return OrtBackend()
    if name == "qairt":
        from loramgr.sections.backends.qairt import QairtBackend

        return QairtBackend(**opts)
    from loramgr.errors import UsageError

    raise UsageError(f"--backend {name}", "must be ort or qairt")
