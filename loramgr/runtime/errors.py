"""The runtime's errors. Inside the full package they are the CLI's own error classes, so a bad plan
exits 4, a damaged file 8 and an unknown name 3; vendored alone, plain exceptions."""

from __future__ import annotations

try:  # inside the full package, these are the CLI's own error classes (exit 8 / exit 4 / exit 3)
    from loramgr.errors import IntegrityError as _IntegrityBase
    from loramgr.errors import InvalidInputError as _InvalidBase
    from loramgr.errors import NotFoundError as _NotFoundBase
except ImportError:  # pragma: no cover - runtime vendored alone
    _IntegrityBase = _InvalidBase = Exception  # type: ignore[assignment,misc]

    class _NotFoundBase(Exception):  # type: ignore[no-redef]
        pass


class PlanIntegrityError(_IntegrityBase):
    """A file does not match the checksum or size the plan records for it."""


class PlanFormatError(_InvalidBase):
    """The plan is not a loramgr plan, or is malformed or hostile (paths escaping its directory)."""


class PlanValueError(_InvalidBase, ValueError):
    """A value the graph cannot hold: an alpha that is not finite once stored in the alpha input's
    dtype (1e39 in float32, 70000 in float16), which would turn every logit into NaN."""


class PlanLookupError(_NotFoundBase, KeyError):
    """A name the plan does not hold: an adapter, a graph, a section for a graph, a tensor's encoding.
    A ``KeyError`` too, so mapping-style callers keep working; the CLI maps it to exit 3."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
