"""The SQL registry: ORM models (``models``), engine + self-running migrations (``db``) and the
repository API (``api.Registry``) every command goes through.

What is here needs no SQLAlchemy: the read-only path of ``loramgr show`` (``quickread``) uses it too."""

from loramgr.config import sqlite_path as sqlite_path  # the read path and the engine share it

#: the newest migration; here (not in ``db``) so that the stdlib-only read path can check it
SCHEMA_HEAD = "0006"

#: the tables of a registry at SCHEMA_HEAD (a test holds it equal to the ORM models' tables)
SCHEMA_TABLES = frozenset(
    {
        "adapter", "adapter_tensor", "alembic_version", "artifact", "attachment_point", "base_model", "build",
        "encoding", "event", "graph", "plan", "use_case", "use_case_adapter", "validation",
    }
)  # fmt: skip
