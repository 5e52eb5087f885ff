"""Opening files a user hands us, safely: stat first, then open.

A FIFO, a device or a socket would block a reader forever (``/dev/zero`` never ends, a FIFO waits for a
writer), so every user-supplied path is checked to be a regular file before it is opened, reads are
bounded, and an unreadable file or directory is invalid input (exit 4) naming the path, never a
traceback. Standard library only: the runtime (:mod:`loramgr.runtime`) uses it too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from loramgr.errors import InvalidInputError, NotFoundError, UsageError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def regular_file(path: str | os.PathLike[str], what: str = "file", *, missing_ok: bool = False) -> Path | None:
    """``path`` if it is a readable regular file (symlinks followed); otherwise exit 3 (missing, or
    ``None`` with ``missing_ok``) or exit 4 (a special file, a directory, no permission)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise NotFoundError(str(p), f"no such {what}") from None
    except PermissionError:
        raise InvalidInputError(str(p), f"cannot read this {what}: permission denied") from None
    except OSError as e:
        raise InvalidInputError(str(p), f"cannot read this {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise InvalidInputError(str(p), f"is {kind}, not a regular {what}")
    if not os.access(p, os.R_OK):
        raise InvalidInputError(str(p), f"cannot read this {what}: permission denied")
    return p


def read_bytes(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a larger one is refused, not read)."""
    p = regular_file(path, what)
    assert p is not None
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InvalidInputError(str(p), f"cannot read this {what}: {e.strerror or e}") from None
    if len(data) > limit:
        raise InvalidInputError(str(p), f"is larger than {limit} bytes; not a {what} loramgr reads")
    return data


def read_text(path: str | os.PathLike[str], limit: int, what: str = "file") -> str:
    """UTF-8 text of a bounded regular file."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(str(path), f"is not UTF-8 text (not a {what})") from None


def readable_dir(path: str | os.PathLike[str], what: str = "directory") -> Path:
    """``path`` if it is a directory we may list and enter (exit 3 missing, exit 4 otherwise)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NotFoundError(str(p), f"no such {what}") from None
    except OSError as e:
        raise InvalidInputError(str(p), f"cannot read this {what}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(str(p), f"is not a {what}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InvalidInputError(str(p), f"cannot read this {what}: permission denied")
    return p


def output_file(path: str | os.PathLike[str], option: str, protected: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Where a command may write a file it was told to write (exit 2 otherwise): not a symbolic link
    (writing through it would change a file somewhere else), not a directory, and not one of
    ``protected``: the files the command reads or has just written (a plan, its graphs, its sections),
    compared after resolving every link, so no spelling of a path lands on them."""
    p = Path(path).absolute()
    if p.is_symlink():
        raise UsageError(f"{option} {path}", "is a symbolic link; loramgr does not write through links")
    if p.is_dir():
        raise UsageError(f"{option} {path}", "is a directory; give a file name")
    if lands_on(p, protected):
        raise UsageError(f"{option} {path}", "is one of the build's own files (its plan, a graph or a section)")
    return p


def lands_on(path: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> bool:
    """``path`` is one of ``files`` once every link on either side is resolved."""
    real = os.path.realpath(path)
    return any(os.path.realpath(f) == real for f in files)
