"""The SQL registry: ORM models (``models``), engine + self-running migrations (``db``) and the
repository API (``api.Registry``) every command goes through.

What is here needs no SQLAlchemy: the read-only path of ``loramgr show`` (``quickread``) uses it too."""

from pathlib import Path

#: the newest migration; here (not in ``db``) so that the stdlib-only read path can check it
SCHEMA_HEAD = "0006"

#: the tables of a registry at SCHEMA_HEAD (a test holds it equal to the ORM models' tables)
SCHEMA_TABLES = frozenset(
    {
        "adapter", "adapter_tensor", "alembic_version", "artifact", "attachment_point", "base_model", "build",
        "encoding", "event", "graph", "plan", "use_case", "use_case_adapter", "validation",
    }
)  # fmt: skip


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (None for other databases and ``:memory:``)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None
