"""Where loramgr keeps its state: ``LORAMGR_HOME`` (registry.db + store/) and ``LORAMGR_DB_URL``.

Resolution order: explicit argument (the CLI's ``--home``) > environment > ``~/.loramgr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None, db_url: str | None = None) -> Settings:
        h = Path(home or os.environ.get("LORAMGR_HOME") or Path.home() / ".loramgr").expanduser().absolute()
        url = db_url or os.environ.get("LORAMGR_DB_URL") or f"sqlite:///{h / 'registry.db'}"
        return cls(home=h, db_url=url)


def actor() -> str:
    """Who is acting, for the audit trail: ``LORAMGR_ACTOR`` or the OS user."""
    env = os.environ.get("LORAMGR_ACTOR")
    if env:
        return env
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid:{os.getuid()}"
