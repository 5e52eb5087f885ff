"""Plan construction: a finished build -> ``plan.json`` (versioned, schema-validated on write).

The plan captures the QNN LoRA v2 on-target flow as data (create context -> apply section(s) ->
update I/O encodings -> set alpha -> execute; reset by alpha 0 or the default adapter) so that a C++
or Python runtime can follow it blindly. The tutorial's rules are explicit boolean fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loramgr import __version__
from loramgr.errors import IntegrityError, UsageError
from loramgr.store import atomic_write, sha256_file

SCHEMA_VERSION = 1


def schema() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "schemas" / "plan.schema.json").read_text())


def validate_plan(doc: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise IntegrityError("plan", f"does not match the plan schema at {where}: {e.message}") from None


def _rel(path: str, root: Path) -> str:
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        raise UsageError(f"plan {root}", f"{path} is outside the plan's directory",
                         hint="write the plan inside the build's output directory (the default), or use `loramgr bundle`")
    return Path(rel).as_posix()


def _steps(base: dict[str, Any], sections: list[dict[str, Any]], alpha_tensor: str | None, alpha: float,
           encodings: bool) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"op": "create_context", "graphs": list(base["graphs"]), "once": True}]
    for s in sections:
        steps.append({"op": "apply_section", "section": s["name"], "path": s["path"], "graphs": s["graphs"]})
    steps.append({"op": "update_io_encodings", "required": encodings})
    if alpha_tensor:
        steps.append({"op": "set_alpha", "tensor": alpha_tensor, "value": alpha})
    steps.append({"op": "execute"})
    return steps


def _contexts(arts: list[dict[str, Any]], dsecs: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Context binaries (qairt) in context order; otherwise the default adapter's section groups."""
    bins = [a for a in arts if a["kind"] == "context_binary"]
    if not bins:
        return [{"name": s["name"], "graphs": s["graphs"]} for s in dsecs]
    return [{"name": Path(a["path"]).stem, "graphs": a["graphs"],
             "binary": {"path": _rel(a["path"], root), "sha256": a["sha256"], "size": a["size"]}} for a in bins]


def make_plan(reg: Any, base_ref: str, build_id: int | None, out: str | Path | None) -> tuple[dict[str, Any], Path]:
    """Build the plan document for a base's newest (or a given) finished build."""
    from loramgr.registry.builds import build_record

    base = reg.base(base_ref)
    rec = build_record(reg, build_id, base_id=base["id"])
    if rec["base_id"] != base["id"]:
        raise UsageError(f"--build {build_id}", f"is not a build of base {base['ref']}")
    root = Path(rec["out_dir"])
    path = Path(out).absolute() if out else root / "plan.json"
    root = path.parent
    for a in rec["artifacts"]:
        p = Path(a["path"])
        if not p.is_file():
            raise IntegrityError(str(p), f"artifact of build {rec['build_id']} is missing")
    graphs = []
    for g in base["graph_list"]:
        arts = [a for a in rec["artifacts"] if a["kind"] in ("graph", "graph_data") and a["graphs"] == [g["name"]]]
        main = next(a for a in arts if a["kind"] == "graph")
        graphs.append({"name": g["name"], "kind": g["kind"], "path": _rel(main["path"], root), "sha256": main["sha256"],
                       "size": main["size"], "inputs": g["io"].get("inputs", {}), "outputs": g["io"].get("outputs", {}),
                       "external_data": [{"path": _rel(a["path"], root), "sha256": a["sha256"], "size": a["size"]}
                                         for a in arts if a["kind"] == "graph_data"]})

    def sections_of(arts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": Path(a["path"]).name.rsplit(".", 1)[0], "graphs": a["graphs"], "path": _rel(a["path"], root),
                 "sha256": a["sha256"], "size": a["size"], "shared": len(a["graphs"]) > 1}
                for a in sorted(arts, key=lambda a: base["graphs"].index(a["graphs"][0]))]

    alpha_tensor = base.get("alpha_tensor")
    adapters = []
    by_adapter: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in rec["artifacts"]:
        if a["kind"] in ("section", "super_section") and a["adapter"]:
            by_adapter.setdefault((a["adapter"], a["adapter_version"]), []).append(a)
    for (name, version), arts in sorted(by_adapter.items()):
        ad = reg.adapter(f"{name}@{version}")
        secs = sections_of(arts)
        enc = reg.adapter_encodings(ad["id"], base["id"]) if hasattr(reg, "adapter_encodings") else {}
        adapters.append({"name": name, "version": version, "ref": f"{name}@{version}", "sha256": ad["sha256"],
                         "rank": ad["rank"], "lora_alpha": ad["lora_alpha"], "recommended_alpha": 1.0,
                         "sections": secs, "io_encodings": enc.get("activation_encodings", {}),
                         "weight_encodings": enc.get("param_encodings", {}),
                         "steps": _steps(base, secs, alpha_tensor, 1.0, bool(enc))})
    dsecs = sections_of([a for a in rec["artifacts"] if a["kind"] == "default_section"])
    denc = reg.adapter_encodings(None, base["id"]) if hasattr(reg, "adapter_encodings") else {}
    shared = bool(rec["share_adapters"])
    doc = {
        "schema": "loramgr.plan", "schema_version": SCHEMA_VERSION, "generated_by": f"loramgr {__version__}",
        "build_id": rec["build_id"], "backend": rec["backend"],
        "base": {"name": base["name"], "version": base["version"], "sdk_version": base["sdk_version"],
                 "precision": base["precision"], "max_rank": base["max_rank"], "fingerprint": base.get("fingerprint"),
                 "graphs": graphs,
                 "contexts": _contexts(rec["artifacts"], dsecs, root)},
        "alpha": {"tensor": alpha_tensor, "default": 1.0, "reset_value": 0.0},
        "rules": {"one_adapter_at_a_time": True, "apply_before_first_execute": shared,
                  "update_io_encodings_after_apply": True, "persistent_section_buffers_for_graph_switching": True,
                  "same_sdk_version_required": True, "reset_by_alpha_zero": alpha_tensor is not None,
                  "reset_by_default_adapter": True},
        "adapters": adapters,
        "default_adapter": {"sections": dsecs, "io_encodings": denc.get("activation_encodings", {}),
                            "steps": _steps(base, dsecs, alpha_tensor, 1.0, bool(denc))},
        "reset_steps": {
            "alpha_zero": ([{"op": "set_alpha", "tensor": alpha_tensor, "value": 0.0}, {"op": "execute"}]
                           if alpha_tensor else []),
            "default_adapter": _steps(base, dsecs, alpha_tensor, 1.0, False)[1:]},
    }
    validate_plan(doc)
    return doc, path


def write_plan(reg: Any, base_ref: str, build_id: int | None = None, out: str | Path | None = None) -> dict[str, Any]:
    from loramgr.registry.lifecycle import record_plan

    doc, path = make_plan(reg, base_ref, build_id, out)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
    sha = sha256_file(path)
    base = reg.base(base_ref)
    record_plan(reg, base["id"], doc["build_id"], str(path), sha, [reg.adapter(a["ref"])["id"] for a in doc["adapters"]])
    return {"plan": str(path), "build_id": doc["build_id"], "adapters": [a["ref"] for a in doc["adapters"]],
            "sha256": sha}
