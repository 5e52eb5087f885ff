"""``loramgr validate``: check adapters against a base (and, for several, against each other) with
the rules of :mod:`loramgr.lora.rules`, and record the outcome in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loramgr.lora.loader import AdapterFile
from loramgr.lora.mapping import AttachmentIndex
from loramgr.lora.rules import CODES, Check, GroupReport, Problem, check_adapter, group_rule
from loramgr.records import Adapter, Base, JsonRecord

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

__all__ = ["CODES", "AdapterReport", "Check", "GroupReport", "Problem", "Report", "meant_for", "validate"]


# -- reports -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterReport(JsonRecord):
    adapter: str
    compatible: bool
    rank: int
    problems: list[Problem]
    warnings: list[Problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "compatible": self.compatible,
            "rank": self.rank,
            "problems": [p.to_json() for p in self.problems],
            "warnings": [w.to_json() for w in self.warnings],
        }


@dataclass(frozen=True)
class Report(JsonRecord):
    """What ``loramgr validate --json`` prints."""

    base: str
    max_rank: int
    precision: str
    compatible: bool
    adapters: list[AdapterReport]
    group: GroupReport | None

    @property
    def codes(self) -> list[str]:
        """Every problem code, adapters' and group's."""
        return sorted(
            {p.code for a in self.adapters for p in a.problems}
            | {p.code for p in (self.group.problems if self.group else [])}
        )

    @property
    def incompatible(self) -> list[str]:
        return [a.adapter for a in self.adapters if not a.compatible]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "max_rank": self.max_rank,
            "precision": self.precision,
            "compatible": self.compatible,
            "adapters": [a.to_json() for a in self.adapters],
            "group": self.group.to_json() if self.group else None,
        }


# -- registry wiring ---------------------------------------------------------------------------------


def meant_for(registry: Registry, base: Base) -> list[str]:
    """Adapters "meant for" a base: registered with ``--base`` naming it or validated against it
    before; when none are, every non-retired adapter."""
    mine = [a for a in registry.adapters(base=base.ref) if a.status != "retired"]
    rows = mine or [a for a in registry.adapters() if a.status != "retired"]
    return [a.ref for a in rows]


def validate(
    registry: Registry,
    refs: list[str],
    base_ref: str,
    *,
    all_: bool = False,
    record: bool = True,
    records: Mapping[str, Adapter] | None = None,
    base: Base | None = None,
) -> Report:
    """Check adapters against a base (and, for several, against each other); record the outcome.
    ``records`` / ``base``: records the caller already holds (a build fetched them)."""
    base = base if base is not None and base.ref == base_ref else registry.base(base_ref)
    if all_:
        refs = list(dict.fromkeys(list(refs) + meant_for(registry, base)))
    checks: dict[str, Check] = {}
    known = records or {}
    found: dict[str, Adapter] = {}
    index = AttachmentIndex(ap.module_path for ap in base.attachment_points)
    for ref in dict.fromkeys(refs):
        rec = known.get(ref) or registry.adapter(ref)
        found[rec.ref] = rec
        checks[rec.ref] = check_adapter(rec, base, AdapterFile(rec).load, index)
    group = group_rule(found, checks, base) if len(checks) > 1 else None
    results = []
    for ref, c in checks.items():
        if record:
            registry.record_validation(
                found[ref].id, base.id, c.ok, [p.to_json() for p in c.problems], [w.to_json() for w in c.warnings]
            )
        results.append(AdapterReport(ref, c.ok, c.rank, list(c.problems), list(c.warnings)))
    ok = all(r.compatible for r in results) and (group is None or not group.problems)
    return Report(base.ref, base.max_rank, base.precision, ok, results, group)
