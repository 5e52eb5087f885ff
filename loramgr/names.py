"""Validation of user-supplied names before they reach paths, SQL or tool configs.

A bad name is invalid input (exit 4): it never reaches a path, a table or a tool config."""

from __future__ import annotations

import re

from loramgr.errors import InvalidInputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def check_name(name: str, what: str = "name") -> str:
    """Names become file names (sections, use cases), so only a safe alphabet is allowed."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{what} {name!r}", "must not be empty")
    if "/" in name or "\\" in name or ".." in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInputError(f"{what} {name!r}", "must not contain '/', '\\', '..' or control characters")
    if not _NAME.match(name):
        raise InvalidInputError(
            f"{what} {name!r}", "use letters, digits and . _ + - (start with a letter or digit, at most 128)"
        )
    return name


#: what a plan and both runtimes call the default adapter: no adapter, use case or group takes them
RESERVED = frozenset({"default", "default_adapter"})


def check_entry_name(name: str, what: str) -> str:
    """A name a plan lists (an adapter, a use case, a group): safe, and not the default adapter's.
    Compared case-blind, since section files named after it may land on a case-insensitive disk."""
    check_name(name, what)
    if name.casefold() in RESERVED:
        raise InvalidInputError(f"{what} {name!r}", "is reserved for the default adapter; choose another name")
    return name


def check_version(version: str) -> str:
    if not _VERSION.match(str(version)) or ".." in str(version):
        raise InvalidInputError(f"version {version!r}", "use letters, digits and . _ + - (at most 64)")
    return str(version)


def sanitize_stem(stem: str) -> str:
    """A default name from a file stem: unsafe characters become '-'."""
    s = re.sub(r"[^A-Za-z0-9_.+-]", "-", stem).strip("-.") or "adapter"
    s = re.sub(r"\.\.+", ".", s)
    return s[:128]
