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

    def __init__(self, what: str, why: str | None = None, *, hint: str | None = None,
                 details: Any = None) -> None:
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


def translate(e: BaseException) -> LoramgrError | None:
    """Environmental failures that deserve a clear message instead of "unexpected": disk full,
    read-only filesystems and databases."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        what = e.filename or "disk"
        return StorageError(str(what), e.strerror or "no space left on device",
                            hint="free space (`loramgr gc`) and re-run; nothing partial was recorded")
    text = str(getattr(e, "orig", None) or e).lower()
    if type(e).__name__ == "OperationalError" and ("readonly database" in text or "read-only" in text):
        return StorageError("registry database", "is read-only", hint="check its permissions / LORAMGR_DB_URL")
    return None
