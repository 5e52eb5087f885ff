"""Plan construction: a finished build -> ``plan.json`` (versioned, schema-validated on write).

The plan captures the QNN LoRA v2 on-target flow as data (create context -> apply section(s) ->
update I/O encodings -> set alpha -> execute; reset by alpha 0 or the default adapter) so that a C++
or Python runtime can follow it blindly. The tutorial's rules are explicit boolean fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramgr.deploy.genie import lora_block, write_genie_config
from loramgr.deploy.qnn_ep import write_qnn_ep_configs
from loramgr.errors import IntegrityError, InternalError, UsageError
from loramgr.infra.files import output_file
from loramgr.infra.store import atomic_write, sha256_file
from loramgr.records import Artifact, Base, Build, FileKind, JsonRecord, OwnerType, SectionKind
from loramgr.targets import SHARED, UNSHARED, find_target, parse_context_rel
from loramgr.version import __version__

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class PlanWritten(JsonRecord):
    """What ``loramgr plan --json`` prints."""

    plan: str
    build_id: int
    adapters: list[str]
    sha256: str
    genie_config: str | None = None
    use_cases: list[str] = field(default_factory=list)
    qnn_ep_configs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {
            "plan": self.plan,
            "build_id": self.build_id,
            "adapters": self.adapters,
            "use_cases": self.use_cases,
            "sha256": self.sha256,
        }
        return (
            out
            | ({"genie_config": self.genie_config} if self.genie_config else {})
            | ({"qnn_ep_configs": self.qnn_ep_configs} if self.qnn_ep_configs else {})
        )


def schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((Path(__file__).parent / "schemas" / "plan.schema.json").read_text())
    return doc


def validate_plan(doc: dict[str, Any]) -> None:
    """A plan loramgr wrote must match its own schema: a mismatch is a bug in loramgr (exit 1)."""
    import jsonschema

    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise InternalError("plan", f"does not match the plan schema at {where}: {e.message}") from None


def _rel(path: str, root: Path) -> str:
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        raise UsageError(
            f"plan {root}",
            f"{path} is outside the plan's directory",
            hint="write the plan inside the build's output directory (the default), or use `loramgr bundle`",
        )
    return Path(rel).as_posix()


def _file(a: Artifact, root: Path) -> dict[str, Any]:
    """A plan file entry ``{path, sha256, size}`` of a build's artifact, its path relative to ``root``."""
    return {"path": _rel(a.path, root), "sha256": a.sha256, "size": a.size}


def _alpha_step(base: Base, alpha_tensor: str, alphas: list[float]) -> dict[str, Any]:
    """``set_alpha`` with one value (a scalar alpha), or with alpha slots the whole vector: ``alphas``
    for the first slots, 0 for the rest (their columns are padding)."""
    if not base.max_adapters:
        return {"op": "set_alpha", "tensor": alpha_tensor, "value": alphas[0]}
    values = list(alphas) + [0.0] * (base.max_adapters - len(alphas))
    return {"op": "set_alpha", "tensor": alpha_tensor, "values": values}


def _apply(s: dict[str, Any]) -> dict[str, Any]:
    """The ``apply_section`` step of a section entry: which file, for which graphs, and (as the entry
    says) what it is and whose, so a runtime that reads only the steps knows it too."""
    return {"op": "apply_section", "section": s["name"], "path": s["path"], "graphs": s["graphs"]} | {
        k: s[k] for k in ("kind", "owner") if s.get(k) is not None
    }


def _steps(
    base: Base, sections: list[dict[str, Any]], alpha_tensor: str | None, alphas: list[float], encodings: bool
) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"op": "create_context", "graphs": base.graph_names, "once": True}]
    for s in sections:
        steps.append(_apply(s))
    steps.append({"op": "update_io_encodings", "required": encodings})
    if alpha_tensor:
        steps.append(_alpha_step(base, alpha_tensor, alphas))
    steps.append({"op": "execute"})
    return steps


def _contexts(arts: tuple[Artifact, ...], dsecs: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Context binaries (qairt) in context order; otherwise the default adapter's section groups."""
    bins = [a for a in arts if a.kind is FileKind.CONTEXT_BINARY]
    if not bins:
        return [{"name": s["name"], "graphs": s["graphs"]} for s in dsecs]
    return [
        {
            "name": Path(a.path).stem,
            "graphs": list(a.graphs),
            "binary": _file(a, root),
        }
        for a in bins
    ]


def make_plan(
    reg: Registry, base_ref: str, build_id: int | None, out: str | Path | None
) -> tuple[dict[str, Any], Path]:
    """Build the plan document for a base's newest (or a given) finished build."""
    base = reg.base(base_ref)
    rec = reg.builds.get(build_id, base_id=base.id)
    if rec.base_id != base.id:
        raise UsageError(f"--build {build_id}", f"is not a build of base {base.ref}")
    root = Path(rec.out_dir)
    path = Path(out).absolute() if out else root / "plan.json"
    root = path.parent
    for a in rec.artifacts:
        if not Path(a.path).is_file():
            raise IntegrityError(a.path, f"artifact of build {rec.id} is missing")
    graphs = []
    for g in base.graphs:
        # a graph file serves one graph; a data file every graph that reads it (builds share them)
        arts = [a for a in rec.artifacts if a.kind in (FileKind.GRAPH, FileKind.GRAPH_DATA) and g.name in a.graphs]
        main = next(a for a in arts if a.kind is FileKind.GRAPH)
        graphs.append(
            {
                "name": g.name,
                "kind": g.kind,
                "path": _rel(main.path, root),
                "sha256": main.sha256,
                "size": main.size,
                "inputs": dict(g.inputs),
                "outputs": dict(g.outputs),
                "external_data": [_file(a, root) for a in arts if a.kind is FileKind.GRAPH_DATA],
            }
        )
    order = base.graph_names

    def sections_of(arts: list[Artifact]) -> list[dict[str, Any]]:
        return [
            {
                "name": a.section,
                "kind": a.kind.value,
                "owner": a.owner.to_json() if a.owner else None,
                "graphs": list(a.graphs),
                "path": _rel(a.path, root),
                "sha256": a.sha256,
                "size": a.size,
                "shared": len(a.graphs) > 1,
            }
            for a in sorted(arts, key=lambda a: order.index(a.graphs[0]))
        ]

    alpha_tensor = base.alpha_tensor
    adapters = []
    by_adapter: dict[str, list[Artifact]] = {}
    for a in rec.artifacts:
        if a.kind in (SectionKind.ADAPTER, SectionKind.ADAPTER_SUPER) and a.adapter_ref:
            by_adapter.setdefault(a.adapter_ref, []).append(a)
    records = reg.adapter_many(sorted(by_adapter))
    encodings = reg.encodings.get_many(base.id, [r.id for r in records.values()])
    for ref, arts in sorted(by_adapter.items()):
        ad = records[ref]
        secs = sections_of(arts)
        enc = encodings[ad.id]
        adapters.append(
            {
                "name": ad.name,
                "version": ad.version,
                "ref": ad.ref,
                "sha256": ad.sha256,
                "rank": ad.rank,
                "lora_alpha": ad.lora_alpha,
                "recommended_alpha": 1.0,
                "sections": secs,
                "io_encodings": enc.to_aimet()["activation_encodings"],
                "weight_encodings": enc.to_aimet()["param_encodings"],
                "steps": _steps(base, secs, alpha_tensor, [1.0], bool(enc)),
            }
        )
    use_cases, groups = _use_cases(reg, base, rec.artifacts, sections_of, alpha_tensor)
    dsecs = sections_of([a for a in rec.artifacts if a.kind is SectionKind.DEFAULT])
    denc = reg.encodings.get(base.id, None)
    shared = bool(rec.share_adapters)
    doc = {
        "schema": "loramgr.plan",
        "schema_version": SCHEMA_VERSION,
        "generated_by": f"loramgr {__version__}",
        "build_id": rec.id,
        "backend": rec.backend,
        # sections made by the QNN LoRA v3 flow (qairt-lora-model-creator) or the v2 one
        "lora_version": 3 if any(a.kind is FileKind.LORA_CREATOR_CONFIG for a in rec.artifacts) else 2,
        "base": {
            "name": base.name,
            "version": base.version,
            "sdk_version": base.sdk_version,
            "precision": base.precision,
            "max_rank": base.max_rank,
            "fingerprint": base.fingerprint,
            "graphs": graphs,
            "contexts": _contexts(rec.artifacts, dsecs, root),
        },
        "alpha": {"tensor": alpha_tensor, "default": 1.0, "reset_value": 0.0, "slots": base.max_adapters},
        "rules": {
            "one_adapter_at_a_time": True,
            "apply_before_first_execute": shared,
            "update_io_encodings_after_apply": True,
            "persistent_section_buffers_for_graph_switching": True,
            "same_sdk_version_required": True,
            "reset_by_alpha_zero": alpha_tensor is not None,
            "reset_by_default_adapter": True,
        },
        "adapters": adapters,
        "use_cases": use_cases,
        "groups": groups,
        "default_adapter": {
            "sections": dsecs,
            "io_encodings": denc.to_aimet()["activation_encodings"],
            "steps": _steps(base, dsecs, alpha_tensor, [1.0] * (base.max_adapters or 1), bool(denc)),
        },
        "reset_steps": {
            "alpha_zero": ([_alpha_step(base, alpha_tensor, [0.0]), {"op": "execute"}] if alpha_tensor else []),
            "default_adapter": _steps(base, dsecs, alpha_tensor, [1.0] * (base.max_adapters or 1), False)[1:],
        },
    }
    targets = _targets(rec, base, root)
    if targets:
        doc["targets"] = targets
    validate_plan(doc)
    return doc, path


def _targets(rec: Build, base: Base, root: Path) -> dict[str, Any]:
    """``targets[NAME]``: what a device of that SoC loads (``path``: the graph's context model,
    weight-shared when the build made one; ``files``: every context ``.bin`` it needs) and, for a
    shared ``path``, ``unshared_path`` / ``unshared_files``: the graph compiled alone, which the x86
    simulator can load. One build, one QNN version: a plan never mixes them."""
    by: dict[tuple[str, str], list[Artifact]] = {}
    for a in rec.artifacts:
        if a.kind in (FileKind.EP_CONTEXT_MODEL, FileKind.EP_CONTEXT_BINARY, FileKind.EP_ENCODINGS):
            where = parse_context_rel(_rel(a.path, Path(rec.out_dir)))
            if where is not None:
                by.setdefault(where, []).append(a)
    out: dict[str, Any] = {}
    for name in sorted({t for t, _ in by}):
        t = find_target(name)
        graphs: dict[str, Any] = {}
        for g in base.graph_names:
            entry: dict[str, Any] = {}
            for variant, key in ((UNSHARED, "unshared"), (SHARED, "shared")):
                arts = by.get((name, variant), [])
                model = next((a for a in arts if a.kind is FileKind.EP_CONTEXT_MODEL and a.graphs == (g,)), None)
                if model is None:
                    continue
                bins = [_file(a, root) for a in arts if a.kind is FileKind.EP_CONTEXT_BINARY and g in a.graphs]
                entry[key] = _file(model, root) | {"files": bins}
            if "shared" in entry:
                graphs[g] = entry["shared"] | {
                    "unshared_path": entry["unshared"]["path"],
                    "unshared_sha256": entry["unshared"]["sha256"],
                    "unshared_size": entry["unshared"]["size"],
                    "unshared_files": entry["unshared"]["files"],
                }
            elif "unshared" in entry:
                graphs[g] = entry["unshared"]
        enc = next((a for a in by.get((name, UNSHARED), []) if a.kind is FileKind.EP_ENCODINGS), None)
        out[name] = {
            "soc_model": t.soc_model,
            "htp_arch": t.htp_arch,
            "qnn_version": rec.sdk_version,
            # a quantized target: its QDQ scheme; a float one computes in the SoC's fp16
            "precision": json.loads(Path(enc.path).read_text())["scheme"] if enc else "fp16",
            "graphs": graphs,
        }
        if enc is not None:  # the LoRA inputs' encodings: what a runtime checks a new adapter against
            out[name]["encodings"] = _file(enc, root)
    return out


def _use_cases(
    reg: Registry,
    base: Base,
    artifacts: tuple[Artifact, ...],
    sections_of: Callable[[list[Artifact]], list[dict[str, Any]]],
    alpha_tensor: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plan's use cases (those of the base whose sections this build holds) and their groups.

    A grouped use case's steps apply its group's quantization section first, marked ``"when":
    "group_changes"``: a runtime skips it while the previous entry was of the same group. A hot use
    case lists, per adapter, the steps that switch to it by alpha alone (``switch_steps``)."""
    by_uc: dict[str, list[Artifact]] = {}
    by_group: dict[str, list[Artifact]] = {}
    for a in artifacts:
        if a.owner is None or not a.is_section:
            continue
        if a.owner.type is OwnerType.USE_CASE:
            by_uc.setdefault(a.owner.name, []).append(a)
        elif a.owner.type is OwnerType.GROUP:
            by_group.setdefault(a.owner.name, []).append(a)
    out = []
    groups: dict[str, list[str]] = {}
    for name, arts in sorted(by_uc.items()):
        uc = reg.use_cases.get(name, base.ref)
        enc = reg.encodings.get(base.id, None, use_case_id=uc.id)
        secs = sections_of(arts)
        steps = _steps(base, secs, alpha_tensor, uc.alphas, bool(enc))
        entry: dict[str, Any] = {
            "name": uc.name,
            "ref": uc.name,
            "hot": uc.hot,
            "adapters": [{"name": s.adapter, "slot": s.slot} for s in uc.slots],
            "alphas": uc.alphas,
            "recommended_alpha": 1.0,
            "sections": secs,
            "io_encodings": enc.to_aimet()["activation_encodings"],
            "weight_encodings": enc.to_aimet()["param_encodings"],
            "steps": steps,
        }
        if uc.group:
            groups.setdefault(uc.group, []).append(uc.name)
            entry["group"] = uc.group
            quant = [
                _apply(q) | {"group": uc.group, "when": "group_changes"}
                for q in sections_of(by_group.get(uc.group, []))
            ]  # fmt: skip
            entry["steps"] = steps[:1] + quant + steps[1:]
        if uc.hot and alpha_tensor and base.max_adapters:
            entry["switch_steps"] = {
                s.adapter: [
                    _alpha_step(base, alpha_tensor, [a if i == s.slot else 0.0 for i, a in enumerate(uc.alphas)]),
                    {"op": "execute"},
                ]
                for s in uc.slots
            }
        out.append(entry)
    return out, [
        {"name": g, "members": members, "sections": sections_of(by_group.get(g, []))}
        for g, members in sorted(groups.items())
    ]


def write_plan(
    reg: Registry,
    base_ref: str,
    build_id: int | None = None,
    out: str | Path | None = None,
    *,
    genie_config: str | Path | None = None,
    qnn_ep_configs: str | Path | None = None,
) -> PlanWritten:
    """Write ``plan.json`` (and, with ``genie_config``, the Genie ``lora`` block) and record the plan
    (an active plan keeps its adapters from being retired)."""
    doc, path = make_plan(reg, base_ref, build_id, out)
    # every output is checked before anything is written: never onto the build's own files
    built = [Path(a.path) for a in reg.builds.get(doc["build_id"]).artifacts]
    output_file(path, "-o", built)
    genie = None
    if genie_config is not None:
        output_file(genie_config, "--genie-config", [*built, path])
        lora_block(doc, path.parent, Path(genie_config).absolute().parent)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
    sha = sha256_file(path)
    if genie_config is not None:
        genie = str(write_genie_config(path, genie_config))
    ep_files = []
    if qnn_ep_configs is not None:
        ep_files = [str(p) for p in write_qnn_ep_configs(path, qnn_ep_configs, built)]
    base = reg.base(base_ref)
    refs = [a["ref"] for a in doc["adapters"]] + [s["name"] for u in doc["use_cases"] for s in u["adapters"]]
    ids = {a.ref: a.id for a in reg.adapter_many(refs).values()}  # use cases' adapters are protected too
    reg.lifecycle.record_plan(base.id, doc["build_id"], str(path), sha, sorted({ids[r] for r in refs}))
    return PlanWritten(
        str(path),
        doc["build_id"],
        [a["ref"] for a in doc["adapters"]],
        sha,
        genie,
        [u["name"] for u in doc["use_cases"]],
        ep_files,
    )
