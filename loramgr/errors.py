"""One exception hierarchy; each class carries the CLI exit code that scripts rely on.

The CLI translates these in exactly one place (``cli.main``) into one line on stderr
``loramgr: error: <what>: <why>``; ``--json`` turns them into an object instead.
"""

from __future__ import annotations

from typing import Any


class LoramgrError(Exception):
    """Base class. ``what`` names the file/ref concerned, ``why`` says what is wrong."""

    exit_code = 1
    kind = "error"

    def __init__(self, what: str, why: str | None = None, *, hint: str | None = None, details: Any = None) -> None:
        self.what = str(what)
        self.why = why
        self.hint = hint
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        msg = self.what if self.why is None else f"{self.what}: {self.why}"
        if self.hint:
            msg += f" ({self.hint})"
        return msg

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.kind, "exit_code": self.exit_code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class InternalError(LoramgrError):
    """A bug in loramgr found by a check of its own (e.g. a plan it wrote fails its own schema)."""

    exit_code = 1
    kind = "internal"


class UsageError(LoramgrError):
    exit_code = 2
    kind = "usage"


class NotFoundError(LoramgrError):
    exit_code = 3
    kind = "not_found"


class InvalidInputError(LoramgrError):
    """A user file (adapter, graph, config, encodings, plan, bundle) is malformed or hostile."""

    exit_code = 4
    kind = "invalid_input"


class IncompatibleError(LoramgrError):
    """An adapter cannot serve a base; ``details`` holds the full problem list."""

    exit_code = 5
    kind = "incompatible"


class ConflictError(LoramgrError):
    exit_code = 6
    kind = "conflict"


class ExternalToolError(LoramgrError):
    """An SDK tool was missing, failed, timed out or did not write what it promised."""

    exit_code = 7
    kind = "external_tool"


class IntegrityError(LoramgrError):
    """Bytes on disk do not match the checksum recorded for them."""

    exit_code = 8
    kind = "integrity"


class StorageError(LoramgrError):
    """The disk is full, or the store / registry database cannot be written."""

    exit_code = 9
    kind = "storage"


class Interrupted(LoramgrError):
    """The user stopped the command (Ctrl-C)."""

    exit_code = 130
    kind = "interrupted"


def translate(e: BaseException) -> LoramgrError | None:
    """Environmental failures that deserve a clear message instead of "unexpected": disk full,
    read-only filesystems and databases. Matched by type; SQLAlchemy is consulted only when it is
    already imported (a command that never opened the registry cannot have failed in it)."""
    import errno
    import sys

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        what = e.filename or "disk"
        return StorageError(
            str(what),
            e.strerror or "no space left on device",
            hint="free space (`loramgr gc`) and re-run; nothing partial was recorded",
        )
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(e, sa_exc.OperationalError):
        text = str(e.orig or e).lower()
        if "readonly database" in text or "read-only" in text:
            return StorageError("registry database", "is read-only", hint="check its permissions / LORAMGR_DB_URL")
    return None
