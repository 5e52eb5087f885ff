"""Use cases in the registry (``reg.use_cases``): adapters active together on one base, slot i = the
i-th adapter. Created only when every rule holds (every problem at once, exit 5, nothing written)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from loramgr.errors import ConflictError, IncompatibleError, NotFoundError, UsageError
from loramgr.names import check_entry_name
from loramgr.records import Base, JsonRecord, UseCase
from loramgr.registry import rows
from loramgr.registry.models import AdapterRow, BaseRow, UseCaseAdapterRow, UseCaseRow

if TYPE_CHECKING:
    from loramgr.lora.rules import Problem
    from loramgr.registry.core import RegistryCore


@dataclass(frozen=True)
class UseCaseReport(JsonRecord):
    """Why a use case was refused (``usecase create --json`` on exit 5)."""

    use_case: str
    base: str
    compatible: bool
    problems: list[Problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "use_case": self.use_case,
            "base": self.base,
            "compatible": self.compatible,
            "problems": [p.to_json() for p in self.problems],
        }


class UseCases:
    """``reg.use_cases``."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg

    def _records(self, s: Session, q: Any) -> list[UseCase]:
        ucs = list(s.scalars(q.options(selectinload(UseCaseRow.slots)).order_by(UseCaseRow.base_id, UseCaseRow.name)))
        ids = {sl.adapter_id for u in ucs for sl in u.slots}
        refs = {a.id: f"{a.name}@{a.version}" for a in s.scalars(select(AdapterRow).where(AdapterRow.id.in_(ids)))}
        bases = {
            b.id: f"{b.name}@{b.version}"
            for b in s.scalars(select(BaseRow).where(BaseRow.id.in_({u.base_id for u in ucs})))
        }
        return [rows.use_case(u, bases[u.base_id], refs) for u in ucs]

    def check(self, name: str, base: Base, refs: Sequence[str], alphas: Sequence[float] | None = None) -> UseCaseReport:
        """Every problem of the use case, without writing anything."""
        from loramgr.lora.loader import AdapterFile
        from loramgr.lora.usecase import check_use_case

        records = (
            list(self.reg.adapter_many(list(refs)).values())
            if len(set(refs)) == len(refs)
            else [self.reg.adapter(r) for r in refs]
        )
        problems, _ = check_use_case(
            base, records, list(alphas) if alphas is not None else [1.0] * len(records), lambda a: AdapterFile(a).load
        )
        return UseCaseReport(name, base.ref, not problems, problems)

    def create(
        self, name: str, base_ref: str, refs: Sequence[str], *, alphas: Sequence[float] | None = None, hot: bool = False
    ) -> UseCase:
        """A new use case; refused (exit 5, every problem listed) when the rules do not hold."""
        check_entry_name(name, "use case name")
        base = self.reg.base(base_ref)
        if not refs:
            raise UsageError(f"use case {name}", "name at least one adapter")
        alphas = list(alphas) if alphas is not None else [1.0] * len(refs)
        report = self.check(name, base, refs, alphas)
        if not report.compatible:
            codes = sorted({p.code for p in report.problems})
            first = next(
                (p for p in report.problems if p.code in ("summed_rank_exceeds", "too_many_adapters")),
                report.problems[0],
            )
            raise IncompatibleError(
                f"use case {name}",
                f"cannot be made on base {base.ref}: {first.message} ({', '.join(codes)})",
                hint=first.hint or None,  # e.g. re-export the base with --max-adapters N
                details=report.to_json(),
            )
        ids = [self.reg.adapter(r).id for r in refs]

        def write(s: Session) -> int:
            if s.scalar(select(UseCaseRow.id).where(UseCaseRow.base_id == base.id, UseCaseRow.name == name)):
                raise ConflictError(
                    f"use case {name}",
                    f"already exists on base {base.ref}",
                    hint="`loramgr usecase remove` it first, or choose another name",
                )
            if s.scalar(select(AdapterRow.id).where(AdapterRow.name == name).limit(1)):
                raise ConflictError(  # a plan and both runtimes look adapters and use cases up by name
                    f"use case {name}", "is the name of an adapter", hint="choose another name"
                )
            u = UseCaseRow(base_id=base.id, name=name, hot=hot, status="active")
            for slot, (aid, alpha) in enumerate(zip(ids, alphas, strict=True)):
                u.slots.append(UseCaseAdapterRow(slot=slot, adapter_id=aid, default_alpha=float(alpha)))
            s.add(u)
            s.flush()
            self.reg.event(
                s, "use_case_create", f"use_case:{base.ref}/{name}", adapters=list(refs), alphas=alphas, hot=hot
            )
            return u.id

        uid = self.reg.retrying(write)
        return self.get_by_id(uid)

    def get_by_id(self, uid: int) -> UseCase:
        with self.reg.session() as s:
            found = self._records(s, select(UseCaseRow).where(UseCaseRow.id == uid))
        if not found:
            raise NotFoundError(f"use case #{uid}", "not in the registry")
        return found[0]

    def get(self, name: str, base_ref: str) -> UseCase:
        base = self.reg.base(base_ref)
        with self.reg.session() as s:
            found = self._records(s, select(UseCaseRow).where(UseCaseRow.base_id == base.id, UseCaseRow.name == name))
        if not found:
            raise NotFoundError(f"use case {name}", f"is not on base {base.ref}", hint="see `loramgr usecase list`")
        return found[0]

    def list(self, base_ref: str | None = None) -> list[UseCase]:
        q = select(UseCaseRow)
        if base_ref is not None:
            q = q.where(UseCaseRow.base_id == self.reg.base(base_ref).id)
        with self.reg.session() as s:
            return self._records(s, q)

    def remove(self, name: str, base_ref: str) -> UseCase:
        uc = self.get(name, base_ref)

        def write(s: Session) -> None:
            row = s.get(UseCaseRow, uc.id)
            if row is not None:
                s.delete(row)
                self.reg.event(s, "use_case_remove", f"use_case:{uc.base}/{name}", adapters=uc.adapters)

        self.reg.retrying(write)
        return uc

    # -- groups ---------------------------------------------------------------------------------------
    def groups(self, base_ref: str) -> dict[str, builtins.list[UseCase]]:
        """Group name -> its use cases (name order), for one base."""
        return {name: ucs for (_, name), ucs in self.all_groups(base_ref).items()}

    def all_groups(self, base_ref: str | None = None) -> dict[tuple[str, str], builtins.list[UseCase]]:
        """(base ref, group name) -> its use cases (name order): group names are per base."""
        out: dict[tuple[str, str], builtins.list[UseCase]] = {}
        for uc in sorted(self.list(base_ref), key=lambda u: (u.base, u.name)):
            if uc.group:
                out.setdefault((uc.base, uc.group), []).append(uc)
        return out

    def create_group(self, name: str, base_ref: str, use_cases: Sequence[str]) -> builtins.list[UseCase]:
        """Make ``use_cases`` one group: they share quantization parameters (exit 6 if one already is
        in another group)."""
        check_entry_name(name, "group name")
        if not use_cases or len(set(use_cases)) != len(use_cases):
            raise UsageError(f"group {name}", "give its use cases, each once")
        members = [self.get(u, base_ref) for u in use_cases]

        def write(s: Session) -> None:
            # checked inside the write transaction (under the registry's write lock): two concurrent
            # `group create` sharing a use case must not both pass a check made before either wrote
            taken_name = select(UseCaseRow.id).where(
                UseCaseRow.base_id == members[0].base_id, UseCaseRow.group_name == name
            )
            if s.scalar(taken_name.limit(1)):
                raise ConflictError(f"group {name}", "exists; remove it first")
            for u in members:
                row = s.get(UseCaseRow, u.id)
                if row is None:
                    raise NotFoundError(f"use case {u.name}", "was removed meanwhile")
                if row.group_name:
                    raise ConflictError(
                        f"use case {u.name}", f"is in group {row.group_name}; a use case is in one group"
                    )
                row.group_name = name
            self.reg.event(s, "group_create", f"group:{members[0].base}/{name}", use_cases=list(use_cases))

        self.reg.retrying(write)
        return [self.get_by_id(u.id) for u in members]

    def remove_group(self, name: str, base_ref: str) -> builtins.list[UseCase]:
        """Dissolve a group (its use cases stay)."""
        members = self.groups(base_ref).get(name)
        if not members:
            raise NotFoundError(f"group {name}", f"is not on base {base_ref}", hint="see `loramgr group list`")

        def write(s: Session) -> None:
            for u in members:  # re-read under the write lock: a member may have moved to another group since
                row = s.get(UseCaseRow, u.id)
                if row is not None and row.group_name == name:
                    row.group_name = None
            self.reg.event(s, "group_remove", f"group:{members[0].base}/{name}")

        self.reg.retrying(write)
        return members
