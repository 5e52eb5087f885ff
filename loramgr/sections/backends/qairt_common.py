"""What both flows of the qairt backend share (LoRA v2 in ``qairt.py``, v3 in ``qairt_v3.py``): the
tools' names, use-case names for the tools' files, contexts, the merged adapter weight config, and
where the tools run."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from loramgr.infra.store import sha256_file
from loramgr.records import Adapter, Base, FileKind
from loramgr.sections.backends import BuildContext, OutFile, Progress, SectionJob
from loramgr.sections.layout import section_groups

MODES = ("none", "adapter_only", "all")  # QNN LoRA v3 quant_updatable_mode
IMPORTER = "qairt-lora-importer"
GENERATOR = "qnn-context-binary-generator"
CONVERTER = "qairt-converter"
QUANTIZED = ("int8", "int16")
#: the importer's per-use-case outputs (``lora_output_files.yaml`` keys) and the file kinds they are kept as
IMPORTED = {"weights": FileKind.IMPORTED_WEIGHTS, "encodings": FileKind.IMPORTED_ENCODINGS}


def use_case_names(adapters: Iterable[Adapter]) -> dict[int, str]:
    """adapter id -> a use-case name safe for YAML keys and file names (``name_v3``), unique."""
    out: dict[int, str] = {}
    taken: set[str] = {"default_adapter"}
    for a in adapters:
        uc = re.sub(r"[^A-Za-z0-9_]", "_", f"{a.name}_v{a.version}")
        if uc in taken:
            uc = f"{uc}_{a.id}"
        taken.add(uc)
        out[a.id] = uc
    return out


def contexts_of(base: Base) -> dict[str, list[str]]:
    """Context name -> graphs: graphs with the same attachment points share a context."""
    return {name.replace("+", "_"): graphs for name, graphs in section_groups(base, True).items()}


def render_weight_config(use_cases: list[dict[str, Any]], share: bool) -> str:
    """The ``--adapter_weight_config`` YAML. ``Yes`` is written as in the QNN documentation (YAML 1.1
    reads it as true)."""
    body = yaml.safe_dump({"use_case": use_cases}, sort_keys=False, default_flow_style=False)
    return ("share_adapters_between_graphs: Yes\n" if share else "") + body


def tools_dir(ctx: BuildContext) -> Path:
    """``OUT/qairt``, emptied: where the SDK tools run and leave their working files."""
    root = ctx.out / "qairt"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def finish(
    files: list[OutFile], ctx: BuildContext, work: Path, jobs: list[SectionJob], progress: Progress
) -> list[OutFile]:
    """Hash every file; the tools' working files (under ``qairt/``) are already in place."""
    for f in files:
        f.placed = f.rel_path.startswith("qairt/")
        p = f.produced_at(ctx.out, work)
        f.sha256, f.size = sha256_file(p), p.stat().st_size
    for j in jobs:
        progress(j)
    return files
