"""One exception hierarchy; each class carries the CLI exit code that scripts rely on.

The CLI translates these in exactly one place (``cli.main``) into one line on stderr
``loramgr: error: <what>: <why>``; ``--json`` turns them into an object instead.
"""

from __future__ import annotations

import errno
import sys
from typing import Any


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of a library's error text (or its type's name), for a one-line message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class LoramgrError(Exception):
    """Base class. ``what`` names the file/ref concerned, ``why`` says what is wrong."""

    exit_code = 1
    kind = "error"
    #: the command already printed its machine-readable result (``validate --json``'s report): the CLI
    #: then adds only the one stderr line, not the JSON error object
    reported = False

    def __init__(self, what: str, why: str | None = None, *, hint: str | None = None, details: Any = None) -> None:
        self.what = str(what)
        self.why = why
        self.hint = hint
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """One line, whatever a library's text put inside it (tarfile's errors hold newlines)."""
        msg = self.what if self.why is None else f"{self.what}: {self.why}"
        if self.hint:
            msg += f" ({self.hint})"
        return " ".join(msg.split())

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


class RegistryDamagedError(LoramgrError):
    """The registry database is not a loramgr registry any more: not a database, truncated, from a
    newer loramgr, a table missing, a corrupt JSON column."""

    exit_code = 10
    kind = "registry_damaged"

    def __init__(self, what: str, why: str | None = None, *, hint: str | None = None, details: Any = None) -> None:
        super().__init__(
            what, why, hint=hint or "run `loramgr fsck`; restore from an `export-registry` dump", details=details
        )


class LockTimeoutError(ConflictError):
    """Another process held the registry's write lock for longer than the lock timeout."""

    kind = "lock_timeout"


class Interrupted(LoramgrError):
    """The user stopped the command (Ctrl-C)."""

    exit_code = 130
    kind = "interrupted"


def translate(e: BaseException) -> LoramgrError | None:
    """Environmental failures that deserve a clear message instead of "unexpected": disk full,
    read-only filesystems and databases. Matched by type; SQLAlchemy is consulted only when it is
    already imported (a command that never opened the registry cannot have failed in it)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        what = e.filename or "disk"
        return StorageError(
            str(what),
            e.strerror or "no space left on device",
            hint="free space (`loramgr gc`) and re-run; nothing partial was recorded",
        )
    if isinstance(e, PermissionError):  # input readers report their own files (exit 4); this is an output
        return StorageError(str(e.filename or "file"), "permission denied", hint="check the permissions of the path")
    if isinstance(e, OSError) and e.filename:  # an output path that cannot be written (not a directory, ...)
        return StorageError(str(e.filename), f"cannot be written ({e.strerror or type(e).__name__})")
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(e, sa_exc.OperationalError):
        text = str(e.orig or e).lower()
        if "readonly database" in text or "read-only" in text:
            return StorageError("registry database", "is read-only", hint="check its permissions / LORAMGR_DB_URL")
        if "disk is full" in text or "disk full" in text or "no space" in text:
            return StorageError("registry database", "the disk is full", hint="free space and re-run")
        if "disk i/o error" in text:
            return StorageError(
                "registry database",
                "the disk failed a read or write (disk I/O error)",
                hint="check the disk and its free space",
            )
        if "unable to open" in text or "could not connect" in text or "connection" in text:
            return StorageError(
                "registry database",
                f"cannot be opened ({text.splitlines()[0][:160]})",
                hint="check LORAMGR_HOME / LORAMGR_DB_URL and the server",
            )
    if sa_exc is not None and isinstance(e, sa_exc.DatabaseError):
        text = str(e.orig or e).lower()
        if any(s in text for s in DAMAGE_SIGNS):
            return RegistryDamagedError("registry database", text.splitlines()[0][:200])
    return None


#: what SQLite and PostgreSQL say about a database that is not (or no longer) a loramgr registry
DAMAGE_SIGNS = (
    "not a database",
    "malformed",
    "no such table",
    "no such column",
    "does not exist",
    "file is encrypted",
    "undefinedtable",
    "undefinedcolumn",
)
