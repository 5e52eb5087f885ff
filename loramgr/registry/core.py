"""What the registry's parts (builds, encodings, use cases, lifecycle, maintenance) need of the
registry: transactions, the audit trail, lookups of adapters and bases, the store and the settings.

A Protocol, so that the parts depend on this contract and not on the :class:`~loramgr.registry.api.Registry`
facade that holds them (the facade satisfies it; the parts never import it back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from loramgr.config import Settings
from loramgr.infra.store import Store
from loramgr.records import Adapter, Base
from loramgr.registry.models import AdapterRow

T = TypeVar("T")


class RegistryCore(Protocol):
    """The registry as its parts see it."""

    settings: Settings
    store: Store

    @property
    def engine(self) -> Engine: ...

    def session(self, write: bool = False) -> AbstractContextManager[Session]:
        """A session in one transaction (``write``: SQLite's write lock taken up front)."""

    def retrying(self, fn: Callable[[Session], T]) -> T:
        """Run a write transaction, retried while another writer holds the lock."""

    def event(self, s: Session, action: str, subject: str, **details: Any) -> None:
        """Append to the audit trail inside ``s``."""

    def adapter_row(self, s: Session, ref: str) -> AdapterRow: ...

    def adapter(self, ref: str) -> Adapter: ...

    def adapter_many(self, refs: Sequence[str]) -> dict[str, Adapter]: ...

    def base(self, ref: str) -> Base: ...

    def bases(self) -> list[Base]: ...

    def validated_adapter_ids(self, base_id: int) -> set[int]: ...
