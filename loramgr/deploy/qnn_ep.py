"""Run-option files for ONNX Runtime's QNN EP (``qnn.lora_config``), from a written plan: which QAIRT
binary section the EP applies to a graph, per adapter and use case."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from loramgr.deploy.genie import quant_groups
from loramgr.infra.files import output_file
from loramgr.infra.store import atomic_write
from loramgr.names import check_name


def write_qnn_ep_configs(plan_path: str | Path, out_dir: str | Path, protected: Iterable[Path] = ()) -> list[Path]:
    """For ONNX Runtime's QNN EP (run option ``qnn.lora_config``): one text file per (graph, adapter or
    use case), ``<entry>.<graph>.txt``, whose first line is ``<graph>;<absolute section path>``.

    The EP applies one section per run; a grouped use case switches in two runs, the group's
    quantization section first, so its files come in order as ``<entry>.<graph>.1-quant.txt`` and
    ``<entry>.<graph>.2-weights.txt``. Paths are absolute: the EP reads them as given. A file is never
    written through a link already in ``out_dir``, nor onto the plan or one of ``protected``."""
    protected = [Path(plan_path), *protected]
    plan_path = Path(plan_path).absolute()
    doc = json.loads(plan_path.read_text())
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    group_of = {m: g for g in quant_groups(doc) for m in g["members"]}
    written = []
    entries = [(a["name"], a["sections"]) for a in doc["adapters"]] + [
        (u["name"], u["sections"]) for u in doc.get("use_cases", [])
    ]
    for name, sections in entries:
        check_name(name, "adapter or use-case name")
        for s in sections:
            for graph in s["graphs"]:
                files = [("", s)]
                g = group_of.get(name)
                if g:
                    q = next(x for x in g["sections"] if graph in x["graphs"])
                    files = [(".1-quant", q), (".2-weights", s)]
                for suffix, sec in files:
                    p = output_file(out / f"{name}.{graph}{suffix}.txt", "--qnn-ep-configs", protected)
                    atomic_write(p, f"{graph};{(plan_path.parent / sec['path']).resolve()}\n".encode())
                    written.append(p)
    return written
