"""Engine creation and self-running migrations.

Like simonw/llm, loramgr upgrades the database whenever it opens it, so users never run migrations
by hand; the check is one cheap query against ``alembic_version`` and Alembic itself is imported only
when an upgrade is due. SQLite runs in WAL mode with a busy timeout, and write transactions start
with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock instead of failing on a
read-to-write lock upgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError, ProgrammingError

from loramgr.config import sqlite_uri
from loramgr.errors import RegistryDamagedError, StorageError, UsageError, first_line, translate
from loramgr.registry import SCHEMA_HEAD as SCHEMA_HEAD  # newest revision; a test asserts it is the head
from loramgr.registry import sqlite_path as sqlite_path
from loramgr.registry.models import Model

if TYPE_CHECKING:
    from alembic.config import Config  # alembic itself is imported only when a migration is due

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


def read_only_sqlite(url: str) -> bool:
    """A SQLite registry whose file (or directory) cannot be written: opened read-only and immutable,
    so read commands work on a read-only home (SQLite would otherwise need to create -wal/-shm files)."""
    path = sqlite_path(url)
    if path is None:
        return False
    if path.exists():
        return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
    return path.parent.exists() and not os.access(path.parent, os.W_OK)


#: PostgreSQL advisory lock key of the registry's write lock, and how long one attempt waits for it
WRITE_LOCK_KEY = 727275
LOCK_WAIT_S = 5.0

#: the databases a registry lives in (``LORAMGR_DB_URL``); SQLAlchemy would try any dialect it knows
DB_SCHEMES = ("sqlite", "postgresql", "postgres")


def make_engine(url: str, busy_ms: int = SQLITE_BUSY_MS) -> Engine:
    """An engine for the registry URL; SQLite gets WAL, a busy timeout and explicit BEGINs. Another
    kind of URL, or one SQLAlchemy cannot parse, is a usage error naming the (redacted) URL."""
    scheme = url.partition(":")[0].partition("+")[0]
    if scheme not in DB_SCHEMES:
        raise UsageError(f"LORAMGR_DB_URL {redact(url)[:120]}", "must be a sqlite:///PATH or postgresql://... URL")
    try:
        return _engine(url, busy_ms)
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as e:
        raise UsageError(f"LORAMGR_DB_URL {redact(url)[:120]}", f"cannot be used ({first_line(e)})") from None


@contextlib.contextmanager
def opened(url: str) -> Iterator[Engine]:
    """An engine for one piece of work (``init``, ``db upgrade``, ``fsck``'s own look at the database),
    disposed after it: no database handle outlives the command in a library caller's process."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _engine(url: str, busy_ms: int) -> Engine:
    path = sqlite_path(url)
    if url.startswith("sqlite"):
        read_only = read_only_sqlite(url)
        if path is not None and read_only:
            if not path.exists():
                raise StorageError(str(path.parent), "is read-only and holds no registry", hint="check LORAMGR_HOME")
            # SQLAlchemy decodes the database part once, SQLite's URI parser once more
            url = "sqlite:///" + quote(sqlite_uri(path, "mode=ro&immutable=1"), safe="/:?=&") + "&uri=true"
        elif path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(str(path.parent), f"cannot create the registry directory ({e.strerror})") from None
        engine = create_engine(url, connect_args={"timeout": busy_ms / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite recipe)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            if not read_only:
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
        pg = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)

        @event.listens_for(pg, "begin")
        def _write_lock(conn: Connection) -> None:
            # SQLite's BEGIN IMMEDIATE, on PostgreSQL: one registry writer at a time, so a
            # read-check-write (a name still free, a use case in no group) holds until it commits.
            # The wait is bounded per attempt; Registry.retrying waits up to the lock timeout.
            if conn.get_execution_options().get("loramgr_write"):
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

        return pg
    return create_engine(url)


def current_revision(engine: Engine) -> str | None:
    """The schema revision Alembic recorded (None: a new database). Two rows mean a damaged registry."""
    try:
        with engine.connect() as conn:
            revs = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    except (OperationalError, ProgrammingError):
        return None
    if len(revs) > 1:
        raise RegistryDamagedError(
            "registry database", f"records {len(revs)} schema revisions ({', '.join(map(str, revs))[:80]})"
        )
    return revs[0] if revs else None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise first-use upgrades of several processes (a file lock for SQLite, an advisory lock
    for PostgreSQL)."""
    if engine.dialect.name == "sqlite" and engine.url.database and engine.url.database != ":memory:":
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


def known_revisions() -> set[str]:
    """Every revision this loramgr's migrations know."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(create_engine("sqlite://")))
    return {r.revision for r in script.walk_revisions()}


def expected_tables() -> set[str]:
    return set(Model.metadata.tables)


def check_database(engine: Engine) -> list[str]:
    """What is wrong with the database as a loramgr registry at the current head (empty: nothing).
    Used at open (cheap) and by ``fsck`` (which adds SQLite's own integrity check)."""
    try:
        rev = current_revision(engine)
        tables = set(inspect(engine).get_table_names())
    except DatabaseError as e:
        known = translate(e)
        if isinstance(known, StorageError):  # unreachable server, disk full, I/O error: not damage
            raise known from None
        return [f"not a readable database ({str(e.orig or e).splitlines()[0][:160]})"]
    problems = []
    if rev is not None and rev != SCHEMA_HEAD and rev not in known_revisions():
        problems.append(
            f"is at schema revision {rev}, which this loramgr does not know (newest: {SCHEMA_HEAD}); "
            "it was written by a newer loramgr"
        )
    if rev == SCHEMA_HEAD:
        missing = sorted(expected_tables() - tables)
        if missing:
            problems.append(f"lacks table(s) {', '.join(missing)}")
    return problems


def ensure_schema(engine: Engine) -> None:
    """Upgrade a registry to the newest schema on first use; refuse a damaged one (exit 10) and one
    that needs an upgrade but cannot be written (exit 9)."""
    where = redact(engine.url.render_as_string(hide_password=False))
    problems = check_database(engine)
    if problems:
        raise RegistryDamagedError(f"registry {where}", problems[0])
    if current_revision(engine) == SCHEMA_HEAD:
        return
    if engine.dialect.name == "sqlite" and "mode=ro" in str(engine.url):
        raise StorageError(f"registry {where}", "needs a schema upgrade but is read-only")
    try:
        upgrade(engine)
    except DatabaseError as e:
        raise RegistryDamagedError(f"registry {where}", str(e.orig or e).splitlines()[0][:200]) from None


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
    """The URL without its password (any text after ``//user:`` up to ``@`` if SQLAlchemy cannot parse it)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
