"""Keeping a registry healthy (``reg.maintenance``): ``gc`` (collect unreferenced store files), ``fsck`` (re-hash and
cross-check rows and files), and ``export-registry`` / ``import-registry`` (a JSON dump for backups
and for moving between SQLite and PostgreSQL).

``gc`` holds the store's guard exclusively (``register`` holds it shared from copy to committed row)
and also skips objects younger than a grace period, so an object whose row is being written by a
process on another machine sharing the store is never collected either.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from loramgr.errors import ConflictError, InvalidInputError
from loramgr.formats.encodings import checked_entries
from loramgr.infra.files import read_text
from loramgr.infra.store import atomic_write, sha256_file
from loramgr.records import JsonRecord
from loramgr.registry import db
from loramgr.registry.importcheck import check_rows
from loramgr.registry.models import AdapterRow, ArtifactRow, BuildRow, GraphRow, Model

if TYPE_CHECKING:
    from loramgr.registry.core import RegistryCore

DEFAULT_GRACE_S = 3600.0
MAX_DUMP_BYTES = 4 << 30
EXPORT_FORMAT = "loramgr.registry-export"


@dataclass(frozen=True)
class GcReport(JsonRecord):
    """What ``gc`` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    deleted: list[dict[str, Any]]  # {"sha256", "size"}
    bytes_freed: int
    kept_young: int
    referenced: int


@dataclass(frozen=True)
class FsckReport(JsonRecord):
    """Every problem ``fsck`` found, by class, and what ``--repair`` did."""

    checked: int
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    orphaned: list[dict[str, Any]] = field(default_factory=list)
    stale_tmp: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    ok: bool = True
    database: list[dict[str, Any]] = field(default_factory=list)  # {"problem": ...}: the registry database itself

    PROBLEMS = ("database", "corrupt", "missing", "orphaned", "stale_tmp", "artifacts")

    def count(self) -> int:
        return sum(len(getattr(self, k)) for k in self.PROBLEMS)


def _age(p: Path) -> float:
    st = p.stat()
    return time.time() - max(st.st_mtime, st.st_ctime)  # ctime: a hard link made now is young


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.datetime) else v


def _is_datetime(col: Any) -> bool:
    try:
        return col.type.python_type is dt.datetime
    except NotImplementedError:
        return False


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class ExportWritten(JsonRecord):
    """What ``export-registry --json`` prints."""

    out: str
    schema: str | None
    rows: dict[str, int]


class Maintenance:
    """``reg.maintenance``: store hygiene and whole-registry dumps."""

    def __init__(self, reg: RegistryCore) -> None:
        self.reg = reg

    def referenced(self, include_retired: bool = True) -> dict[str, str]:
        """sha256 -> what references it (adapters, base graphs and their external data)."""
        refs: dict[str, str] = {}
        with self.reg.session() as s:
            for a in s.scalars(select(AdapterRow)):
                if include_retired or a.status != "retired":
                    refs[a.sha256] = f"adapter {a.name}@{a.version}"
            for g in s.scalars(select(GraphRow)):
                refs[g.onnx_sha256] = f"graph {g.name} of base {g.base_id}"
                for e in g.external_data or []:
                    if e.get("sha256"):
                        refs[e["sha256"]] = f"external data {e.get('location')} of graph {g.name}"
        return refs

    def gc(self, *, dry_run: bool = False, retired: bool = False, grace_s: float = DEFAULT_GRACE_S) -> GcReport:
        """Delete store objects no live row references (retired adapters' objects only with ``retired``)."""
        with self.reg.store.guard(shared=False):
            live = self.referenced(include_retired=not retired)
            deleted, kept_young, freed = [], 0, 0
            for sha, path in list(self.reg.store.iter_objects()):
                if sha in live:
                    continue
                if _age(path) < grace_s:
                    kept_young += 1
                    continue
                size = path.stat().st_size
                if not dry_run:
                    self.reg.store.remove(sha)
                deleted.append({"sha256": sha, "size": size})
                freed += size
            if not dry_run and deleted:

                def note(s: Session) -> None:
                    self.reg.event(s, "gc", "store", deleted=len(deleted), bytes=freed, retired=retired)

                self.reg.retrying(note)
        return GcReport(dry_run, deleted, freed, kept_young, len(live))

    def fsck(self, *, repair: bool = False, grace_s: float = DEFAULT_GRACE_S) -> FsckReport:
        """Re-hash every store object and check every row's file. ``repair`` quarantines corrupt objects,
        deletes orphaned ones and stale temporary files, and marks builds whose artifacts are gone as
        failed (so the next build redoes them); missing adapter/graph files cannot be repaired."""
        damaged = self.database_problems()
        if damaged:  # rows cannot be trusted: report the database and stop there
            return FsckReport(0, database=[{"problem": p} for p in damaged], ok=False)
        store = self.reg.store
        problems: dict[str, list[dict[str, Any]]] = {
            "corrupt": [],
            "missing": [],
            "orphaned": [],
            "stale_tmp": [],
            "artifacts": [],
        }
        repaired: list[str] = []
        with store.guard(shared=False):
            live = self.referenced()
            seen = set()
            checked = 0
            for sha, path in list(store.iter_objects()):
                checked += 1
                seen.add(sha)
                if not path.is_file() or path.is_symlink() or sha256_file(path) != sha:  # a directory in its place too
                    problems["corrupt"].append({"sha256": sha, "path": str(path), "used_by": live.get(sha)})
                    if repair:
                        q = store.root / "quarantine" / sha
                        q.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(path), q)
                        repaired.append(f"quarantined {sha}")
                elif sha not in live and _age(path) >= grace_s:
                    problems["orphaned"].append({"sha256": sha, "path": str(path), "size": path.stat().st_size})
                    if repair:
                        store.remove(sha)
                        repaired.append(f"deleted orphan {sha}")
            with self.reg.session() as s:
                retired_collected = {
                    a.sha256 for a in s.scalars(select(AdapterRow).where(AdapterRow.status == "retired"))
                }
            for sha, who in sorted(live.items()):
                if sha not in seen and not (sha in retired_collected and who.startswith("adapter")):
                    problems["missing"].append({"sha256": sha, "used_by": who})
            tmp = store.root / "tmp"
            for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
                if p.is_file() and _age(p) >= grace_s:
                    problems["stale_tmp"].append({"path": str(p)})
                    if repair:
                        p.unlink(missing_ok=True)
                        repaired.append(f"deleted {p.name}")
            bad_builds = self._check_artifacts(problems["artifacts"])
            if repair and bad_builds:

                def mark(s: Session) -> None:
                    for b in s.scalars(select(BuildRow).where(BuildRow.id.in_(bad_builds))):
                        b.status = "failed"
                        b.log = (b.log or "") + "\nfsck: artifacts missing or corrupt; marked failed\n"
                        self.reg.event(s, "fsck_repair", f"build:{b.id}", reason="artifacts missing or corrupt")

                self.reg.retrying(mark)
                repaired += [f"marked build {b} failed" for b in sorted(bad_builds)]
        unrepairable = problems["missing"] + (
            [] if repair else problems["corrupt"] + problems["orphaned"] + problems["stale_tmp"] + problems["artifacts"]
        )
        return FsckReport(checked, **problems, repaired=repaired, ok=not unrepairable)

    def database_problems(self) -> list[str]:
        """The database itself: a readable loramgr registry at a known revision with every table, and
        (SQLite) ``PRAGMA integrity_check``. Opens its own engine, so a damaged registry is reported,
        not raised."""
        with db.opened(self.reg.settings.db_url) as engine:
            problems = db.check_database(engine)
            if not problems and engine.dialect.name == "sqlite":
                try:
                    with engine.connect() as conn:
                        res = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
                except DatabaseError as e:
                    res = [str(e.orig or e).splitlines()[0]]
                if res != ["ok"]:
                    problems += [f"integrity_check: {r}" for r in res[:20]]
            if not problems and "encoding" in inspect(engine).get_table_names():  # (a new database has none)
                problems += _encoding_row_problems(engine)
            return problems

    def _check_artifacts(self, out: list[dict[str, Any]]) -> set[int]:
        bad: set[int] = set()
        with self.reg.session() as s:
            rows = s.execute(select(ArtifactRow, BuildRow.id).join(BuildRow).where(BuildRow.status == "done")).all()
        for art, bid in rows:
            p = Path(art.path)
            why = (
                "missing"
                if not p.is_file()
                else ("corrupt" if p.stat().st_size != art.size or sha256_file(p) != art.sha256 else None)
            )
            if why:
                out.append({"build": bid, "path": art.path, "problem": why})
                bad.add(bid)
        return bad

    # -- export / import -----------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Every row of every table (parents first), plus the schema revision."""
        tables = {}
        with self.reg.session() as s:
            for t in Model.metadata.sorted_tables:
                rows = s.execute(select(t).order_by(*t.primary_key.columns)).mappings().all()
                tables[t.name] = [{k: _jsonable(v) for k, v in r.items()} for r in rows]
        return {
            "format": EXPORT_FORMAT,
            "version": 1,
            "schema": db.current_revision(self.reg.engine),
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "tables": tables,
        }

    def import_(self, doc: Any, source: str = "dump") -> dict[str, int]:
        """Load an export into an empty registry (ids preserved; PostgreSQL sequences advanced)."""
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("tables"), dict):
            raise InvalidInputError(source, f"not a {EXPORT_FORMAT} file")
        if doc.get("schema") != db.current_revision(self.reg.engine):
            raise InvalidInputError(
                source,
                f"was exported at schema {doc.get('schema')}, this registry is at "
                f"{db.current_revision(self.reg.engine)}; upgrade the older side first",
            )
        counts: dict[str, int] = {}
        with self.reg.session(write=True) as s:
            for t in Model.metadata.sorted_tables:
                if s.scalar(select(func.count()).select_from(t)):
                    raise ConflictError(
                        f"registry {db.redact(self.reg.settings.db_url)}",
                        f"table {t.name} is not empty; import-registry only fills an empty registry",
                    )
            for t in Model.metadata.sorted_tables:
                rows = doc["tables"].get(t.name, [])
                cols = {c.name: c for c in t.columns}
                clean = []
                if not isinstance(rows, list):
                    raise InvalidInputError(source, f"table {t.name}: expected a list of rows")
                for r in rows:
                    if not isinstance(r, dict) or set(r) - set(cols):
                        raise InvalidInputError(source, f"table {t.name}: unexpected row layout")
                    try:
                        clean.append(
                            {
                                k: (dt.datetime.fromisoformat(v) if isinstance(v, str) and _is_datetime(cols[k]) else v)
                                for k, v in r.items()
                            }
                        )
                    except ValueError:
                        raise InvalidInputError(source, f"table {t.name}: a timestamp does not parse") from None
                check_rows(t, clean, source)
                if clean:
                    try:
                        with s.begin_nested():
                            s.execute(t.insert(), clean)
                    except SAIntegrityError as e:
                        first = str(e.orig).strip().splitlines()[0] if e.orig else "constraint violated"
                        raise InvalidInputError(source, f"table {t.name}: {first[:160]}") from None
                counts[t.name] = len(clean)
            if self.reg.engine.dialect.name == "postgresql":
                for t in Model.metadata.sorted_tables:
                    pk = list(t.primary_key.columns)
                    if len(pk) == 1 and counts.get(t.name):
                        s.execute(
                            text(
                                f"SELECT setval(pg_get_serial_sequence('{t.name}', '{pk[0].name}'), "
                                f"(SELECT max({pk[0].name}) FROM {t.name}))"
                            )
                        )
        return counts

    def export_to(self, out: str | Path) -> ExportWritten:
        """Write the export to ``out`` atomically."""
        doc = self.export()
        atomic_write(out, dumps(doc).encode())
        return ExportWritten(str(out), doc["schema"], {k: len(v) for k, v in doc["tables"].items()})

    def import_from(self, path: str | Path) -> dict[str, int]:
        """Read an export file (strict JSON) and import it."""
        try:
            doc = json.loads(read_text(path, MAX_DUMP_BYTES, "registry dump"))
        except (ValueError, RecursionError) as e:
            raise InvalidInputError(str(path), f"not valid JSON ({type(e).__name__})") from None
        return self.import_(doc, str(path))


def _encoding_row_problems(engine: Engine) -> list[str]:
    """Encoding rows whose entries a build or ``encodings show`` would refuse (NaN scales, strings,
    offsets out of range): checked as an imported file is, and named by row (at most 20)."""
    out: list[str] = []
    with engine.connect() as conn:
        for rid, tensor, raw in conn.execute(text("SELECT id, tensor, entries FROM encoding")):
            try:
                checked_entries(json.loads(raw) if isinstance(raw, str) else raw, str(tensor), "registry")
            except (ValueError, InvalidInputError) as e:
                why = e.why if isinstance(e, InvalidInputError) else f"does not parse ({e})"
                out.append(f"encoding row {rid} ({str(tensor)[:80]}): {why}")
                if len(out) >= 20:
                    break
    return out
