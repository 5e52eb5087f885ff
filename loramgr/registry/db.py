"""Engine creation and self-running migrations.

Like simonw/llm, loramgr upgrades the database whenever it opens it, so users never run migrations
by hand; the check is one cheap query against ``alembic_version`` and Alembic itself is imported only
when an upgrade is due. SQLite runs in WAL mode with a busy timeout, and write transactions start
with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock instead of failing on a
read-to-write lock upgrade.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, ProgrammingError

if TYPE_CHECKING:
    from alembic.config import Config  # alembic itself is imported only when a migration is due

#: newest Alembic revision; a test asserts it equals the migrations' head.
SCHEMA_HEAD = "0003"
SQLITE_BUSY_MS = 60_000


def migrations_dir() -> Path:
    """The Alembic script directory, shipped inside the package (``loramgr/registry/migrations``)."""
    return Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite recipe)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = "IMMEDIATE" if conn.get_execution_options().get("loramgr_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if url.startswith("postgresql") or url.startswith("postgres"):
        # small pools: a CLI process needs one connection, and teams run many processes at once
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
    return create_engine(url)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise first-use upgrades of several processes (a file lock for SQLite, an advisory lock
    for PostgreSQL)."""
    if engine.dialect.name == "sqlite" and engine.url.database and engine.url.database != ":memory:":
        import fcntl

        lock = Path(engine.url.database).with_suffix(".migrate.lock")
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()
    else:
        yield


def upgrade(engine: Engine, revision: str = "head") -> list[str]:
    """Upgrade to ``revision``; returns the revisions applied (empty when already current)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    with _migration_lock(engine):
        before = current_revision(engine)
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        script = ScriptDirectory.from_config(cfg)
        after = current_revision(engine)
        applied = []
        for rev in script.iterate_revisions(after, before):
            applied.append(rev.revision)
        return list(reversed(applied))


def ensure_schema(engine: Engine) -> None:
    if current_revision(engine) != SCHEMA_HEAD:
        upgrade(engine)


def migration_status(engine: Engine) -> list[dict[str, object]]:
    """Every known revision with whether it is applied (``loramgr db upgrade --list``)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    cur = current_revision(engine)
    applied = set()
    if cur:
        applied = {r.revision for r in script.iterate_revisions(cur, "base")}
    revs = list(reversed(list(script.walk_revisions())))
    return [{"revision": r.revision, "message": r.doc, "applied": r.revision in applied} for r in revs]


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
