"""Where loramgr keeps its state: ``LORAMGR_HOME`` (registry.db + store/) and ``LORAMGR_DB_URL``.

Resolution order: explicit argument (the CLI's ``--home``) > environment > ``~/.loramgr``.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

#: how long a write waits for another process's registry write lock before giving up (seconds)
DEFAULT_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @classmethod
    def resolve(
        cls, home: str | os.PathLike[str] | None = None, db_url: str | None = None, lock_timeout: float | None = None
    ) -> Settings:
        h = Path(home or os.environ.get("LORAMGR_HOME") or Path.home() / ".loramgr").expanduser().absolute()
        url = db_url or os.environ.get("LORAMGR_DB_URL") or sqlite_url(h / "registry.db")
        if lock_timeout is None:
            try:
                lock_timeout = float(os.environ.get("LORAMGR_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
            except ValueError:
                lock_timeout = DEFAULT_LOCK_TIMEOUT
        if not 0 < lock_timeout < 1e7:  # NaN included
            lock_timeout = DEFAULT_LOCK_TIMEOUT
        return cls(home=h, db_url=url, lock_timeout=lock_timeout)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file. The path is percent-escaped: SQLAlchemy decodes the URL's
    database part, so a home holding ``%41`` would open ``A`` and one holding ``?`` would be cut there."""
    return "sqlite:///" + quote(str(path), safe="/")


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, decoded as SQLAlchemy decodes it (None for
    other databases and ``:memory:``)."""
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    path = unquote(url.split(":///", 1)[1].partition("?")[0])
    return Path(path) if path and path != ":memory:" else None


def sqlite_uri(path: Path, query: str) -> str:
    """A SQLite ``file:`` URI (``sqlite3.connect(..., uri=True)``): SQLite percent-decodes it too."""
    return f"file:{quote(str(path), safe='/')}?{query}"


def actor() -> str:
    """Who is acting, for the audit trail: ``LORAMGR_ACTOR`` or the OS user."""
    env = os.environ.get("LORAMGR_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid:{os.getuid()}"
