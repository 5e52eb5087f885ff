"""Build backends. A backend turns prepared adapters into section files in a work directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class SectionJob:
    """One adapter (or the default adapter, ``adapter is None``) to turn into sections."""

    adapter: dict[str, Any] | None
    cache_key: str
    groups: dict[str, list[str]]  # section name -> graphs it serves
    kind: str  # "section" | "super_section" | "default_section"
    share: bool = False  # super adapters: one section per group of graphs


@dataclass
class OutFile:
    rel_path: str
    kind: str
    graphs: list[str]
    adapter_id: int | None = None
    adapter: str | None = None
    cache_key: str | None = None
    sha256: str = ""
    size: int = 0
    path: str = ""  # absolute, set once the file is in its final place
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def version(self) -> str: ...

    def build(self, base: dict[str, Any], jobs: list[SectionJob], work: Path, *, n_jobs: int,
              progress: Any) -> list[OutFile]: ...


def get_backend(name: str, **opts: Any) -> Backend:
    if name == "ort":
        from loramgr.build.backends.ort import OrtBackend

        return OrtBackend()
    if name == "qairt":
        from loramgr.build.backends.qairt import QairtBackend

        return QairtBackend(**opts)
    from loramgr.errors import UsageError

    raise UsageError(f"--backend {name}", "must be ort or qairt")
