"""Adapter stages and the audit trail.

``registered -> validated -> built -> deployed -> retired``: validate and build move adapters forward
themselves; ``promote --to deployed`` is the deliberate step (only from ``built``); ``retire`` is
refused while an active plan (one written for devices and not superseded) still lists the adapter,
unless forced. Every change is an event with who (``LORAMGR_ACTOR`` or the OS user), what and when.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from loramgr.errors import ConflictError, UsageError
from loramgr.registry.models import Adapter, Event, PlanRecord

#: allowed ``promote`` targets and the stages they may come from
PROMOTIONS = {"deployed": ("built",), "built": ("validated",)}


def _adapter_row(s: Any, reg: Any, ref: str) -> Adapter:
    rec = reg.adapter(ref)
    a = s.get(Adapter, rec["id"])
    assert a is not None
    return a


def promote(reg: Any, ref: str, to: str) -> dict[str, Any]:
    if to not in PROMOTIONS:
        raise UsageError(f"--to {to}", f"must be one of {', '.join(PROMOTIONS)}")

    def write(s: Any) -> dict[str, Any]:
        a = _adapter_row(s, reg, ref)
        if a.status == to:
            return {"adapter": f"{a.name}@{a.version}", "status": to, "changed": False}
        if a.status not in PROMOTIONS[to]:
            raise ConflictError(f"adapter {a.name}@{a.version}", f"is {a.status}; only {' or '.join(PROMOTIONS[to])} "
                                f"adapters can be promoted to {to}")
        reg.event(s, "status", f"adapter:{a.name}@{a.version}", old=a.status, new=to, via="promote")
        a.status = to
        return {"adapter": f"{a.name}@{a.version}", "status": to, "changed": True}

    return reg.retrying(write)


def active_plans_with(s: Any, adapter_id: int) -> list[PlanRecord]:
    return [p for p in s.scalars(select(PlanRecord).where(PlanRecord.status == "active")) if adapter_id in p.adapter_ids]


def retire(reg: Any, ref: str, force: bool = False) -> dict[str, Any]:
    def write(s: Any) -> dict[str, Any]:
        a = _adapter_row(s, reg, ref)
        if a.status == "retired":
            return {"adapter": f"{a.name}@{a.version}", "status": "retired", "changed": False}
        plans = active_plans_with(s, a.id)
        if plans and not force:
            raise ConflictError(f"adapter {a.name}@{a.version}", f"is in {len(plans)} active plan(s) "
                                f"({', '.join(p.path for p in plans[:3])})", hint="write a new plan without it, or --force")
        reg.event(s, "status", f"adapter:{a.name}@{a.version}", old=a.status, new="retired", via="retire",
                  forced=bool(plans), plans=[p.path for p in plans])
        a.status = "retired"
        return {"adapter": f"{a.name}@{a.version}", "status": "retired", "changed": True, "forced": bool(plans)}

    return reg.retrying(write)


def record_plan(reg: Any, base_id: int, build_id: int | None, path: str, sha256: str, adapter_ids: list[int]) -> int:
    """Remember a written plan; an older active plan at the same path is superseded."""

    def write(s: Any) -> int:
        for old in s.scalars(select(PlanRecord).where(PlanRecord.path == path, PlanRecord.status == "active")):
            old.status = "superseded"
        p = PlanRecord(base_id=base_id, build_id=build_id, path=path, sha256=sha256, adapter_ids=adapter_ids)
        s.add(p)
        s.flush()
        reg.event(s, "plan", f"plan:{p.id}", path=path, build=build_id, adapters=len(adapter_ids))
        return p.id

    return reg.retrying(write)


def history(reg: Any, ref: str) -> list[dict[str, Any]]:
    """Every audit event about an adapter, oldest first."""
    rec = reg.adapter(ref)
    subject = f"adapter:{rec['name']}@{rec['version']}"
    with reg.session() as s:
        rows = s.scalars(select(Event).where(Event.subject.in_([subject, f"adapter:{rec['id']}"]))
                         .order_by(Event.id))
        return [{"at": e.at.isoformat() + "Z", "actor": e.actor, "action": e.action, "subject": e.subject,
                 "details": e.details} for e in rows]
