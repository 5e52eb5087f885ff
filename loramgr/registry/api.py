"""The repository API: every command reads and writes the registry through :class:`Registry`.

One object, typed records out (:mod:`loramgr.records`), with sub-objects per concern:
``reg.builds`` (build and artifact rows), ``reg.encodings`` (per-adapter encodings),
``reg.lifecycle`` (stages, plans, history) and ``reg.maintenance`` (gc, fsck, export/import).

Writes are short transactions (``BEGIN IMMEDIATE`` on SQLite); unique constraints plus a bounded retry
turn concurrent writers into the outcome a single writer would produce: the same bytes registered twice
give one record, different bytes under one name get consecutive versions. Only a unique-constraint
race is retried; any other constraint violation is reported at once. Integrity errors never leak:
they become domain errors (MLflow's store does the same).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload

from loramgr.config import Settings, actor, sqlite_uri
from loramgr.errors import (
    ConflictError,
    InvalidInputError,
    LockTimeoutError,
    NotFoundError,
    RegistryDamagedError,
    UsageError,
)
from loramgr.formats.onnx_graph import node_outputs
from loramgr.formats.peft import MAX_ALPHA, finite_alpha
from loramgr.formats.safetensors import FiniteScan
from loramgr.infra.store import Store, StoredObject
from loramgr.lora.attachments import inspect_base
from loramgr.lora.source import open_source
from loramgr.names import check_entry_name, check_name, check_version
from loramgr.records import ADAPTER_STATUSES, Adapter, Base, EncodingSet
from loramgr.registry import db, rows
from loramgr.registry.builds import Builds
from loramgr.registry.encodings import Encodings
from loramgr.registry.lifecycle import Lifecycle
from loramgr.registry.maintenance import Maintenance
from loramgr.registry.models import (
    AdapterRow,
    AdapterTensorRow,
    AttachmentPointRow,
    BaseRow,
    DamagedValue,
    EventRow,
    GraphRow,
    UseCaseRow,
    ValidationRow,
)
from loramgr.registry.usecases import UseCases

T = TypeVar("T")
log = logging.getLogger("loramgr")
#: SQLite's own busy wait per attempt; `retrying` loops until the lock timeout
LOCK_POLL_S = 5.0
_HEXREF = re.compile(r"^[0-9a-f]{8,64}$")
RETRIES = 12


def split_ref(ref: str) -> tuple[str, str | None]:
    """``NAME[@VERSION]`` -> (name, version or None)."""
    if "@" in ref:
        name, version = ref.rsplit("@", 1)
        return name, version
    return ref, None


def _unique_race(e: SAIntegrityError) -> bool:
    """Is this a unique-constraint violation (another writer won a race), as opposed to a foreign-key,
    NOT NULL or check violation (a real error that retrying cannot fix)?"""
    orig = e.orig
    code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None), "sqlstate", None)
    if code:
        return bool(code == "23505")  # PostgreSQL unique_violation
    return "unique constraint" in str(orig).lower()  # SQLite: "UNIQUE constraint failed: ..."


def _locked(e: OperationalError) -> bool:
    msg = str(e.orig).lower() if e.orig else str(e).lower()
    return "locked" in msg or "could not serialize" in msg or "deadlock" in msg or "lock timeout" in msg


def _rows_using(db_url: str, sha256: str) -> int:
    """Rows using a store object, read from a SQLite registry as an immutable file (no -shm or -wal to
    create, so it reads on a full disk); 0 when even that fails or the database is another kind."""
    path = db.sqlite_path(db_url)
    if path is None:
        return 0
    try:
        con = sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True, timeout=1.0)
        try:
            q = (
                "SELECT (SELECT count(*) FROM adapter WHERE sha256 = ?)"
                " + (SELECT count(*) FROM graph WHERE onnx_sha256 = ?)"
            )
            return int(con.execute(q, (sha256, sha256)).fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


class Registry:
    """A registry (database + store) as configured by :class:`~loramgr.config.Settings`."""

    def __init__(self, settings: Settings | None = None, *, migrate: bool = True) -> None:
        self.settings = settings or Settings.resolve()
        self.store = Store(self.settings.store_dir)
        self._engine: Engine | None = None
        self._migrate = migrate
        self.builds = Builds(self)
        self.encodings = Encodings(self)
        self.lifecycle = Lifecycle(self)
        self.maintenance = Maintenance(self)
        self.use_cases = UseCases(self)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """Opened on first use, upgraded to the newest schema, refused when damaged (exit 10)."""
        if self._engine is None:
            # waits inside SQLite are short; `retrying` bounds the total wait and says what it waits for
            engine = db.make_engine(
                self.settings.db_url, busy_ms=int(min(LOCK_POLL_S, self.settings.lock_timeout) * 1000)
            )
            if self._migrate:
                try:
                    db.ensure_schema(engine)
                except BaseException:
                    engine.dispose()
                    raise
            self._engine = engine
        return self._engine

    def close(self) -> None:
        """Release database connections (the CLI calls this when a command ends)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextlib.contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction; ``write`` takes SQLite's write lock up front. A row whose JSON
        column no longer parses is registry damage (exit 10), not a crash."""
        eng = self.engine.execution_options(loramgr_write=True) if write else self.engine
        try:
            with Session(eng, expire_on_commit=False) as s:
                with s.begin():
                    yield s
        except json.JSONDecodeError as e:
            raise RegistryDamagedError("registry database", f"a JSON column does not parse ({e.msg})") from None
        except DamagedValue as e:
            raise RegistryDamagedError("registry database", str(e)) from None

    def retrying(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a write transaction, retrying unique-constraint races and lock waits only.

        A lock held by another process is waited for up to ``settings.lock_timeout`` seconds in all
        (saying once, on the ``loramgr`` logger, what it waits for), then :class:`LockTimeoutError`."""
        delay = 0.02
        races = 0
        start = time.monotonic()
        said = False
        while True:
            try:
                with self.session(write=True) as s:
                    return fn(s)
            except SAIntegrityError as e:
                if not _unique_race(e):
                    first = str(e.orig).strip().splitlines()[0] if e.orig else type(e).__name__
                    raise ConflictError(
                        "registry",
                        f"constraint violated: {first}",
                        hint="a row it refers to was removed concurrently; re-run",
                    ) from None
                races += 1
                if races >= RETRIES:
                    raise ConflictError("registry", "gave up after repeated concurrent conflicts") from None
            except OperationalError as e:
                if not _locked(e):
                    raise
                waited = time.monotonic() - start
                if waited >= self.settings.lock_timeout:
                    raise LockTimeoutError(
                        f"registry {db.redact(self.settings.db_url)}",
                        f"another process held its write lock for {waited:.0f} s",
                        hint="retry later, or raise --lock-timeout / LORAMGR_LOCK_TIMEOUT",
                    ) from None
                if not said:
                    log.warning(
                        "waiting up to %.0f s for the registry's write lock (another process is writing)",
                        self.settings.lock_timeout,
                    )
                    said = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def event(self, s: Session, action: str, subject: str, **details: Any) -> None:
        s.add(EventRow(actor=actor(), action=action, subject=subject, details=details))

    # -- adapters ---------------------------------------------------------------------------------
    def register_adapter(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        version: str | None = None,
        lora_alpha: float | None = None,
        base: str | None = None,
        tags: dict[str, str] | None = None,
        link: bool = False,
        encodings: str | Path | None = None,
        on_stored: Callable[[StoredObject], None] | None = None,
    ) -> tuple[Adapter, bool]:
        """Register an adapter file or PEFT directory; returns (record, created).

        Everything that can be checked is checked before a byte is copied (encodings included: they
        name the tensors of ``base``); the copy is re-checked after it lands in the store (the source
        could change underneath us), and the adapter row and its encodings are written in one
        transaction. A failure after the copy removes the object again unless another row uses it.
        """
        src = open_source(path)
        name = check_entry_name(src.default_name if name is None else name, "adapter name")
        if version is not None:
            version = check_version(version)
        if base is not None:
            check_name(split_ref(base)[0], "base name")
        tags = dict(tags or {})
        for k in tags:
            check_name(k, "tag key")
        enc: tuple[Base, EncodingSet] | None = None
        if encodings is not None:
            if base is None:
                raise UsageError("--encodings", "needs --base (encodings name the base's tensors)")
            b = self.base(base)
            enc = (b, self.encodings.read_file(encodings, b))
        if not src.header.tensors:
            raise InvalidInputError(str(src.weights), "holds no tensors", hint="is this a LoRA adapter?")
        zero = [t.key for t in src.header.tensors.values() if len(t.shape) == 2 and 0 in t.shape]
        if zero:
            raise InvalidInputError(str(src.weights), f"tensor {zero[0]!r} is empty (rank 0)")
        if lora_alpha is not None and not finite_alpha(lora_alpha):
            raise UsageError(f"--lora-alpha {lora_alpha}", f"must be a finite number within +-{MAX_ALPHA:g}")
        alpha = lora_alpha if lora_alpha is not None else (src.config.lora_alpha if src.config else None)
        config_sha = src.config_digest(lora_alpha)
        with self.store.guard():
            obj = self.store.ingest(src.weights, link=link, inspect=FiniteScan(src.header))
            try:
                if obj.size != src.header.file_size:
                    raise InvalidInputError(str(src.weights), "changed while it was being registered; try again")
                if on_stored:
                    on_stored(obj)
                return self.retrying(
                    lambda s: self._insert_adapter(s, src, obj, name, version, alpha, base, tags, config_sha, enc)
                )
            except BaseException:
                if obj.created:
                    self._drop_unreferenced(obj.sha256)
                raise

    def _drop_unreferenced(self, sha256: str) -> None:
        """Remove an object this registration stored, unless a row (another process's) uses it."""
        try:
            with self.session() as s:
                used = s.scalar(select(func.count()).select_from(AdapterRow).where(AdapterRow.sha256 == sha256)) or 0
                used += s.scalar(select(func.count()).select_from(GraphRow).where(GraphRow.onnx_sha256 == sha256)) or 0
        except Exception:  # noqa: BLE001 - the database cannot be read now (a full disk cannot hold SQLite's -shm)
            used = _rows_using(self.settings.db_url, sha256)
        if not used:
            with contextlib.suppress(OSError):
                self.store.remove(sha256)

    def _insert_adapter(
        self,
        s: Session,
        src: Any,
        obj: StoredObject,
        name: str,
        version: str | None,
        alpha: float | None,
        base: str | None,
        tags: dict[str, str],
        config_sha: str,
        enc: tuple[Base, EncodingSet] | None,
    ) -> tuple[Adapter, bool]:
        existing = s.scalar(
            select(AdapterRow).where(AdapterRow.sha256 == obj.sha256, AdapterRow.config_sha256 == config_sha)
        )
        if existing is not None:
            if enc is not None:
                self.encodings.write(s, enc[0].id, existing.id, enc[1], "import")
            return self._full(s, existing), False
        top = s.scalar(select(func.max(AdapterRow.version_num)).where(AdapterRow.name == name)) or 0
        if not top and (uc := s.scalar(select(UseCaseRow).where(UseCaseRow.name == name).limit(1))) is not None:
            raise ConflictError(  # a plan looks adapters and use cases up by name: one namespace
                f"adapter {name}", f"is the name of a use case on base id {uc.base_id}", hint="choose another name"
            )
        if version is None:
            version = str(top + 1)
            while s.scalar(select(AdapterRow.id).where(AdapterRow.name == name, AdapterRow.version == version)):
                top += 1
                version = str(top + 1)
        elif s.scalar(select(AdapterRow.id).where(AdapterRow.name == name, AdapterRow.version == version)):
            raise ConflictError(
                f"{name}@{version}",
                "this version is already taken by other bytes",
                hint="omit --version to get the next one",
            )
        cfg = src.config
        a = AdapterRow(
            name=name,
            version=version,
            version_num=top + 1,
            sha256=obj.sha256,
            config_sha256=config_sha,
            size=obj.size,
            source_uri=str(Path(src.weights).absolute()),
            peft_config=cfg.to_json() if cfg else None,
            config_json=src.config_text,
            rank=src.rank,
            alpha=alpha,
            dtype=src.dtype,
            base_hint=base or (cfg.base_model_name_or_path if cfg else None),
            status="registered",
            tags=tags,
        )
        s.add(a)
        s.flush()
        s.execute(
            insert(AdapterTensorRow),
            [
                {
                    "adapter_id": a.id,
                    "key": t.key,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "offset_begin": t.begin,
                    "offset_end": t.end,
                }
                for t in src.header.tensors.values()
            ],
        )
        self.event(
            s, "register", f"adapter:{name}@{version}", sha256=obj.sha256, size=obj.size, source=str(src.weights)
        )
        if enc is not None:
            self.encodings.write(s, enc[0].id, a.id, enc[1], "import")
        return self._full(s, a), True

    def _full(self, s: Session, a: AdapterRow) -> Adapter:
        return rows.adapter(a, self.store.path_for(a.sha256), tensors=rows.tensor_lists(s, [a.id])[a.id])

    def adapter_row(self, s: Session, ref: str) -> AdapterRow:
        """The row behind ``NAME``, ``NAME@VERSION`` or a sha256 prefix (>= 8 hex), inside ``s``."""
        name, version = split_ref(ref)
        q = select(AdapterRow).where(AdapterRow.name == name)
        if version is not None:
            a = s.scalar(q.where(AdapterRow.version == version))
        else:
            a = s.scalar(q.order_by(AdapterRow.version_num.desc()).limit(1))
        if a is None and version is None and _HEXREF.match(ref):
            hits = s.scalars(select(AdapterRow).where(AdapterRow.sha256.like(ref + "%")).limit(2)).all()
            if len(hits) > 1:
                raise UsageError(f"adapter {ref}", "sha256 prefix is ambiguous; give more characters")
            a = hits[0] if hits else None
        if a is None:
            raise NotFoundError(f"adapter {ref}", "not in the registry", hint="see `loramgr list adapters`")
        return a

    def adapter(self, ref: str) -> Adapter:
        """The full record (tensor list included) of one adapter."""
        with self.session() as s:
            return self._full(s, self.adapter_row(s, ref))

    def adapter_many(self, refs: Sequence[str]) -> dict[str, Adapter]:
        """Full records of several refs in one session, tensor lists in one query (builds of many
        adapters: per-record queries would dominate an incremental build)."""
        with self.session() as s:
            newest = self._newest_by_name(s, [r for r in dict.fromkeys(refs) if split_ref(r)[1] is None])
            found = {r: newest.get(r) or self.adapter_row(s, r) for r in dict.fromkeys(refs)}
            lists = rows.tensor_lists(s, [a.id for a in found.values()])
            return {r: rows.adapter(a, self.store.path_for(a.sha256), tensors=lists[a.id]) for r, a in found.items()}

    @staticmethod
    def _newest_by_name(s: Session, names: Sequence[str]) -> dict[str, AdapterRow]:
        """The newest version of each name, in a few queries rather than one per name (a name not
        found is left to :meth:`adapter_row`, which also tries it as a sha256 prefix)."""
        out: dict[str, AdapterRow] = {}
        for i in range(0, len(names), 500):
            for a in s.scalars(select(AdapterRow).where(AdapterRow.name.in_(names[i : i + 500]))):
                if a.name not in out or a.version_num > out[a.name].version_num:
                    out[a.name] = a
        return out

    def adapters(self, *, base: str | None = None, status: str | None = None) -> list[Adapter]:
        """Adapters (listing records, no tensor lists): all, with one ``status``, and/or meant for
        ``base`` (registered with ``--base`` naming it, or validated against it)."""
        if status is not None and status not in ADAPTER_STATUSES:
            raise UsageError(f"--status {status}", f"must be one of {', '.join(ADAPTER_STATUSES)}")
        b = self.base(base) if base is not None else None
        validated = self.validated_adapter_ids(b.id) if b is not None else set()
        with self.session() as s:
            q = select(AdapterRow).order_by(AdapterRow.name, AdapterRow.version_num)
            if status:
                q = q.where(AdapterRow.status == status)
            counts = rows.tensor_counts(s)
            out = [
                rows.adapter(a, self.store.path_for(a.sha256), tensor_count=counts.get(a.id, 0), s=s)
                for a in s.scalars(q)
            ]
        if b is not None:
            out = [a for a in out if a.base_hint in (b.name, b.ref) or a.id in validated]
        return out

    # -- bases ------------------------------------------------------------------------------------
    def register_base(
        self,
        graphs: Sequence[tuple[str, str | Path]],
        *,
        name: str,
        version: str | None = None,
        max_rank: int | None = None,
        precision: str | None = None,
        sdk_version: str | None = None,
        alpha_input: str = "lora_alpha",
        allow_empty: bool = False,
        link: bool = False,
        quant_updatable_mode: str = "none",
        kinds: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> tuple[Base, bool]:
        """Register one graph or a multi-graph context (prefill/decode, parts) as a base model."""
        name = check_name(name, "base name")
        if version is not None:
            version = check_version(version)
        if not graphs:
            raise UsageError("base register", "give an ONNX file or at least one --graph NAME=PATH")
        spec = inspect_base(
            graphs,
            max_rank=max_rank,
            precision=precision,
            alpha_input=alpha_input,
            allow_empty=allow_empty,
            kinds=kinds,
        )
        points = (details or {}).get("quantization_points") or []
        if points:
            known = set().union(*(node_outputs(g.path) for g in spec.graphs))
            missing = sorted(set(points) - known)
            if missing:
                raise InvalidInputError(
                    str(spec.graphs[0].path), f"--quant-point {missing[0]}: no node of the graphs produces this tensor"
                )
        stored: list[StoredObject] = []
        with self.store.guard():
            try:
                for g in spec.graphs:
                    stored.append(obj := self.store.ingest(g.path, link=link))
                    g.sha256, g.size = obj.sha256, obj.size
                    for ext in g.external:
                        stored.append(eobj := self.store.ingest(g.path.parent / ext["location"], link=link))
                        ext["sha256"], ext["size"] = eobj.sha256, eobj.size
                return self.retrying(
                    lambda s: self._insert_base(
                        s, spec, name, version, sdk_version, quant_updatable_mode, details or {}
                    )
                )
            except BaseException:
                for obj in stored:
                    if obj.created:
                        self._drop_unreferenced(obj.sha256)
                raise

    def _insert_base(
        self,
        s: Session,
        spec: Any,
        name: str,
        version: str | None,
        sdk_version: str | None,
        qmode: str,
        details: dict[str, Any],
    ) -> tuple[Base, bool]:
        fingerprint = spec.fingerprint()
        for b in s.scalars(select(BaseRow).where(BaseRow.name == name)):
            if b.details.get("fingerprint") == fingerprint and (version is None or b.version == version):
                return rows.base(b), False
        if version is None:
            nums = [int(v) for v in s.scalars(select(BaseRow.version).where(BaseRow.name == name)) if v.isdigit()]
            version = str(max(nums, default=0) + 1)
        elif s.scalar(select(BaseRow.id).where(BaseRow.name == name, BaseRow.version == version)):
            raise ConflictError(f"base {name}@{version}", "already registered with other graphs")
        b = BaseRow(
            name=name,
            version=version,
            sdk_version=sdk_version,
            precision=spec.precision,
            max_rank=spec.max_rank,
            alpha_tensor=spec.alpha_input,
            quant_updatable_mode=qmode,
            max_adapters=spec.max_adapters,
            status="active",
            details={"fingerprint": fingerprint, **details},
        )
        for i, g in enumerate(spec.graphs):
            b.graphs.append(
                GraphRow(
                    name=g.name,
                    position=i,
                    kind=g.kind,
                    onnx_sha256=g.sha256,
                    size=g.size,
                    path=str(g.path.absolute()),
                    file_name=g.path.name,
                    external_data=g.external,
                    io=g.io,
                )
            )
        for ap in spec.attachment_points.values():
            b.attachment_points.append(
                AttachmentPointRow(
                    module_path=ap.module_path,
                    tensor_a=ap.tensor_a,
                    tensor_b=ap.tensor_b,
                    in_features=ap.in_features,
                    out_features=ap.out_features,
                    rank=ap.rank,
                    dtype=ap.dtype,
                    graphs=sorted(spec.ap_graphs[ap.module_path], key=spec.graph_order.index),
                    tensor_indices=ap.tensor_indices,
                )
            )
        s.add(b)
        s.flush()
        self.event(
            s,
            "register",
            f"base:{name}@{version}",
            graphs=[g.name for g in spec.graphs],
            attachment_points=len(spec.attachment_points),
        )
        return rows.base(b), True

    def base(self, ref: str) -> Base:
        name, version = split_ref(ref)
        with self.session() as s:
            q = (
                select(BaseRow)
                .where(BaseRow.name == name)
                .options(selectinload(BaseRow.graphs), selectinload(BaseRow.attachment_points))
            )
            if version is not None:
                b = s.scalar(q.where(BaseRow.version == version))
            else:
                b = s.scalar(q.order_by(BaseRow.id.desc()).limit(1))
            if b is None:
                raise NotFoundError(f"base {ref}", "not in the registry", hint="see `loramgr list bases`")
            return rows.base(b)

    def base_by_id(self, base_id: int) -> Base:
        with self.session() as s:
            b = s.get(BaseRow, base_id)
            if b is None:
                raise NotFoundError(f"base #{base_id}", "not in the registry")
            return rows.base(b)

    def bases(self) -> list[Base]:
        with self.session() as s:
            q = (
                select(BaseRow)
                .order_by(BaseRow.name, BaseRow.id)
                .options(selectinload(BaseRow.graphs), selectinload(BaseRow.attachment_points))
            )
            return [rows.base(b) for b in s.scalars(q)]

    # -- validation ---------------------------------------------------------------------------------
    def record_validation(
        self,
        adapter_id: int,
        base_id: int,
        ok: bool,
        problems: list[dict[str, Any]],
        warnings: list[dict[str, Any]] | None = None,
    ) -> None:
        """Keep the outcome; a pass moves a ``registered`` adapter to ``validated``. The history event
        lists the problem codes and the warning codes (a pass that warned says so)."""

        def write(s: Session) -> None:
            s.add(ValidationRow(adapter_id=adapter_id, base_id=base_id, ok=ok, problems=problems))
            a = s.get(AdapterRow, adapter_id)
            b = s.get(BaseRow, base_id)
            if a is None or b is None:
                raise NotFoundError(f"adapter #{adapter_id} / base #{base_id}", "was removed concurrently")
            subject = f"adapter:{a.name}@{a.version}"
            if ok and a.status == "registered":
                a.status = "validated"
                self.event(s, "status", subject, old="registered", new="validated", base=f"{b.name}@{b.version}")
            self.event(
                s,
                "validate",
                subject,
                base=f"{b.name}@{b.version}",
                ok=ok,
                problems=[p["code"] for p in problems],
                warnings=[w["code"] for w in warnings or []],
            )

        self.retrying(write)

    def validated_adapter_ids(self, base_id: int) -> set[int]:
        """Adapters whose newest validation against ``base_id`` passed."""
        with self.session() as s:
            found = s.execute(
                select(ValidationRow.adapter_id, ValidationRow.ok)
                .where(ValidationRow.base_id == base_id)
                .order_by(ValidationRow.id)
            ).all()
        latest: dict[int, bool] = {}
        for aid, ok in found:
            latest[aid] = ok
        return {aid for aid, ok in latest.items() if ok}

    def resolve(self, ref: str) -> Adapter | Base:
        """``show REF``: an adapter if one matches, else a base."""
        try:
            return self.adapter(ref)
        except NotFoundError:
            try:
                return self.base(ref)
            except NotFoundError:
                raise NotFoundError(ref, "no adapter or base with this name, NAME@VERSION or sha256 prefix") from None


def register(reg: Registry, path: str | Path, **options: Any) -> tuple[Adapter, bool]:
    """``loramgr register`` as a function, beside ``validate``/``build``/``write_plan``: see
    :meth:`Registry.register_adapter` for the options."""
    return reg.register_adapter(path, **options)


__all__ = ["Registry", "register", "split_ref"]
