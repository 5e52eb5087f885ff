"""Adapter stages, plan records and the audit trail (``reg.lifecycle``).

``registered -> validated -> built -> deployed -> retired``: validate and build move adapters forward
themselves; ``promote --to deployed`` is the deliberate step (only from ``built``); ``retire`` is
refused while an active plan (one written for devices and not superseded) still lists the adapter,
unless forced. Every change is an event with who (``LORAMGR_ACTOR`` or the OS user), what and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from loramgr.errors import ConflictError, UsageError
from loramgr.records import Event, JsonRecord, ref_of
from loramgr.registry import rows
from loramgr.registry.models import EventRow, PlanRow

if TYPE_CHECKING:
    from loramgr.registry.core import RegistryCore

#: allowed ``promote`` targets and the stages they may come from
PROMOTIONS = {"deployed": ("built",), "built": ("validated",)}


@dataclass(frozen=True)
class StageChange(JsonRecord):
    """What ``promote`` / ``retire`` did (``--json``)."""

    adapter: str
    status: str
    changed: bool
    forced: bool = False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"adapter": self.adapter, "status": self.status, "changed": self.changed}
        if self.status == "retired" and self.changed:
            out["forced"] = self.forced
        return out


def _active_plans_with(s: Session, adapter_id: int) -> list[PlanRow]:
    return [p for p in s.scalars(select(PlanRow).where(PlanRow.status == "active")) if adapter_id in p.adapter_ids]


class Lifecycle:
    """``reg.lifecycle``: stage changes, plan records, history."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg

    def promote(self, ref: str, to: str) -> StageChange:
        if to not in PROMOTIONS:
            raise UsageError(f"--to {to}", f"must be one of {', '.join(PROMOTIONS)}")

        def write(s: Session) -> StageChange:
            a = self.reg.adapter_row(s, ref)
            r = ref_of(a.name, a.version)
            if a.status == to:
                return StageChange(r, to, False)
            if a.status not in PROMOTIONS[to]:
                raise ConflictError(
                    f"adapter {r}",
                    f"is {a.status}; only {' or '.join(PROMOTIONS[to])} adapters can be promoted to {to}",
                )
            self.reg.event(s, "status", f"adapter:{r}", old=a.status, new=to, via="promote")
            a.status = to
            return StageChange(r, to, True)

        return self.reg.retrying(write)

    def retire(self, ref: str, force: bool = False) -> StageChange:
        def write(s: Session) -> StageChange:
            a = self.reg.adapter_row(s, ref)
            r = ref_of(a.name, a.version)
            if a.status == "retired":
                return StageChange(r, "retired", False)
            plans = _active_plans_with(s, a.id)
            if plans and not force:
                raise ConflictError(
                    f"adapter {r}",
                    f"is in {len(plans)} active plan(s) ({', '.join(p.path for p in plans[:3])})",
                    hint="write a new plan without it, or --force",
                )
            self.reg.event(
                s,
                "status",
                f"adapter:{r}",
                old=a.status,
                new="retired",
                via="retire",
                forced=bool(plans),
                plans=[p.path for p in plans],
            )
            a.status = "retired"
            return StageChange(r, "retired", True, bool(plans))

        return self.reg.retrying(write)

    def record_plan(self, base_id: int, build_id: int | None, path: str, sha256: str, adapter_ids: list[int]) -> int:
        """Remember a written plan; an older active plan at the same path is superseded."""

        def write(s: Session) -> int:
            for old in s.scalars(select(PlanRow).where(PlanRow.path == path, PlanRow.status == "active")):
                old.status = "superseded"
            p = PlanRow(base_id=base_id, build_id=build_id, path=path, sha256=sha256, adapter_ids=adapter_ids)
            s.add(p)
            s.flush()
            self.reg.event(s, "plan", f"plan:{p.id}", path=path, build=build_id, adapters=len(adapter_ids))
            return p.id

        return self.reg.retrying(write)

    def history(self, ref: str) -> list[Event]:
        """Every audit event about an adapter, oldest first."""
        rec = self.reg.adapter(ref)
        with self.reg.session() as s:
            q = (
                select(EventRow)
                .where(EventRow.subject.in_([f"adapter:{rec.ref}", f"adapter:{rec.id}"]))
                .order_by(EventRow.id)
            )
            return [rows.event(e) for e in s.scalars(q)]
