"""The repository API: every command reads and writes the registry through :class:`Registry`.

Writes are short transactions (``BEGIN IMMEDIATE`` on SQLite); unique constraints plus a bounded retry
turn concurrent writers into the outcome a single writer would produce: the same bytes registered twice
give one record, different bytes under one name get consecutive versions. Integrity errors never leak:
they become domain errors (MLflow's store does the same).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload

from loramgr.config import Settings, actor
from loramgr.errors import ConflictError, InvalidInputError, NotFoundError, UsageError
from loramgr.names import check_name, check_version
from loramgr.registry import db
from loramgr.registry.models import Adapter, AdapterTensor, AttachmentPoint, BaseModel, Event, Graph, Validation
from loramgr.store import Store, StoredObject

T = TypeVar("T")
_HEXREF = re.compile(r"^[0-9a-f]{8,64}$")
RETRIES = 12


def _split_ref(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        name, version = ref.rsplit("@", 1)
        return name, version
    return ref, None


def _tensor_lists(s: Session, adapter_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """adapter id -> its tensors (key order), for any number of adapters in one query."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in adapter_ids}
    q = (select(AdapterTensor.adapter_id, AdapterTensor.key, AdapterTensor.dtype, AdapterTensor.shape,
                AdapterTensor.offset_begin, AdapterTensor.offset_end)
         .where(AdapterTensor.adapter_id.in_(list(out))).order_by(AdapterTensor.adapter_id, AdapterTensor.key))
    for aid, key, dtype, shape, b, e in s.execute(q):
        out[aid].append({"key": key, "dtype": dtype, "shape": shape, "offsets": [b, e]})
    return out


class Registry:
    """A registry (database + store) as configured by :class:`~loramgr.config.Settings`."""

    def __init__(self, settings: Settings | None = None, *, migrate: bool = True) -> None:
        self.settings = settings or Settings.resolve()
        self.store = Store(self.settings.store_dir)
        self._engine: Engine | None = None
        self._migrate = migrate

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.make_engine(self.settings.db_url)
            if self._migrate:
                db.ensure_schema(self._engine)
        return self._engine

    def close(self) -> None:
        """Release database connections (the CLI calls this when a command ends)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextlib.contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction; ``write`` takes SQLite's write lock up front."""
        eng = self.engine.execution_options(loramgr_write=True) if write else self.engine
        with Session(eng, expire_on_commit=False) as s:
            with s.begin():
                yield s

    def retrying(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a write transaction, retrying on unique-constraint races and lock timeouts."""
        delay = 0.02
        for attempt in range(RETRIES):
            try:
                with self.session(write=True) as s:
                    return fn(s)
            except SAIntegrityError:
                if attempt == RETRIES - 1:
                    raise ConflictError("registry", "gave up after repeated concurrent conflicts") from None
            except OperationalError as e:
                msg = str(e.orig).lower() if e.orig else str(e).lower()
                if "locked" not in msg and "could not serialize" not in msg and "deadlock" not in msg:
                    raise
                if attempt == RETRIES - 1:
                    raise ConflictError("registry", "database stayed locked; retry later") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def event(self, s: Session, action: str, subject: str, **details: Any) -> None:
        s.add(Event(actor=actor(), action=action, subject=subject, details=details))

    # -- adapters ---------------------------------------------------------------------------------
    def register_adapter(self, path: str | Path, *, name: str | None = None, version: str | None = None,
                         lora_alpha: float | None = None, base: str | None = None,
                         tags: dict[str, str] | None = None, link: bool = False,
                         on_stored: Callable[[StoredObject], None] | None = None) -> tuple[dict[str, Any], bool]:
        """Register an adapter file or PEFT directory; returns (record, created).

        Everything that can be checked is checked before a byte is copied; the copy is re-checked
        after it lands in the store (the source could change underneath us), and a failure after
        the copy removes the object again unless another row already uses it.
        """
        from loramgr.source import open_source

        src = open_source(path)
        name = check_name(src.default_name if name is None else name, "adapter name")
        if version is not None:
            version = check_version(version)
        if base is not None:
            check_name(_split_ref(base)[0], "base name")
        tags = dict(tags or {})
        for k in tags:
            check_name(k, "tag key")
        alpha = lora_alpha if lora_alpha is not None else (src.config.lora_alpha if src.config else None)
        config_sha = src.config_digest(lora_alpha)
        with self.store.guard():
            return self._store_and_insert(src, link, on_stored, name, version, alpha, base, tags, config_sha)

    def _store_and_insert(self, src: Any, link: bool, on_stored: Callable[[StoredObject], None] | None, name: str,
                          version: str | None, alpha: float | None, base: str | None, tags: dict[str, str],
                          config_sha: str) -> tuple[dict[str, Any], bool]:
        obj = self.store.ingest(src.weights, link=link)
        try:
            if obj.size != src.header.file_size:
                raise InvalidInputError(str(src.weights), "changed while it was being registered; try again")
            if on_stored:
                on_stored(obj)
            return self.retrying(lambda s: self._insert_adapter(s, src, obj, name, version, alpha, base, tags,
                                                                config_sha))
        except BaseException:
            if obj.created:
                self._drop_unreferenced(obj.sha256)
            raise

    def _drop_unreferenced(self, sha256: str) -> None:
        with contextlib.suppress(Exception):
            with self.session() as s:
                used = s.scalar(select(func.count()).select_from(Adapter).where(Adapter.sha256 == sha256))
                used += s.scalar(select(func.count()).select_from(Graph).where(Graph.onnx_sha256 == sha256))
            if not used:
                self.store.remove(sha256)

    def _insert_adapter(self, s: Session, src: Any, obj: StoredObject, name: str, version: str | None,
                        alpha: float | None, base: str | None, tags: dict[str, str],
                        config_sha: str) -> tuple[dict[str, Any], bool]:
        existing = s.scalar(select(Adapter).where(Adapter.sha256 == obj.sha256,
                                                  Adapter.config_sha256 == config_sha))
        if existing is not None:
            return self.adapter_record(existing, s) | {"already_registered": True}, False
        top = s.scalar(select(func.max(Adapter.version_num)).where(Adapter.name == name)) or 0
        if version is None:
            version = str(top + 1)
            while s.scalar(select(Adapter.id).where(Adapter.name == name, Adapter.version == version)):
                top += 1
                version = str(top + 1)
        elif s.scalar(select(Adapter.id).where(Adapter.name == name, Adapter.version == version)):
            raise ConflictError(f"{name}@{version}", "this version is already taken by other bytes",
                                hint="omit --version to get the next one")
        cfg = src.config
        a = Adapter(name=name, version=version, version_num=top + 1, sha256=obj.sha256, config_sha256=config_sha,
                    size=obj.size, source_uri=str(Path(src.weights).absolute()),
                    peft_config=cfg.to_json() if cfg else None, rank=src.rank, alpha=alpha, dtype=src.dtype,
                    base_hint=base or (cfg.base_model_name_or_path if cfg else None), status="registered",
                    tags=tags)
        s.add(a)
        s.flush()
        s.execute(AdapterTensor.__table__.insert(), [
            {"adapter_id": a.id, "key": t.key, "dtype": t.dtype, "shape": list(t.shape),
             "offset_begin": t.begin, "offset_end": t.end} for t in src.header.tensors.values()])
        self.event(s, "register", f"adapter:{name}@{version}", sha256=obj.sha256, size=obj.size,
                   source=str(src.weights))
        return self.adapter_record(a, s), True

    def _adapter_query(self, s: Session, ref: str) -> Adapter:
        name, version = _split_ref(ref)
        q = select(Adapter).where(Adapter.name == name)
        if version is not None:
            a = s.scalar(q.where(Adapter.version == version))
        else:
            a = s.scalar(q.order_by(Adapter.version_num.desc()).limit(1))
        if a is None and version is None and _HEXREF.match(ref):
            hits = s.scalars(select(Adapter).where(Adapter.sha256.like(ref + "%")).limit(2)).all()
            if len(hits) > 1:
                raise UsageError(f"adapter {ref}", "sha256 prefix is ambiguous; give more characters")
            a = hits[0] if hits else None
        if a is None:
            raise NotFoundError(f"adapter {ref}", "not in the registry", hint="see `loramgr list adapters`")
        return a

    def adapter(self, ref: str) -> dict[str, Any]:
        with self.session() as s:
            a = self._adapter_query(s, ref)
            return self.adapter_record(a, s, full=True)

    def adapter_many(self, refs: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Full records of several refs in one session, tensor lists in one query (builds of many
        adapters: per-record queries would dominate an incremental build)."""
        with self.session() as s:
            rows = {r: self._adapter_query(s, r) for r in dict.fromkeys(refs)}
            lists = _tensor_lists(s, [a.id for a in rows.values()])
            return {r: self.adapter_record(a, s, full=True, tensor_list=lists[a.id]) for r, a in rows.items()}

    def adapters(self, *, base: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Adapter).order_by(Adapter.name, Adapter.version_num)
            if status:
                q = q.where(Adapter.status == status)
            counts = dict(s.execute(select(AdapterTensor.adapter_id, func.count())
                                    .group_by(AdapterTensor.adapter_id)).all())
            return [self.adapter_record(a, s, tensor_count=counts.get(a.id, 0)) for a in s.scalars(q)]

    def adapter_record(self, a: Adapter, s: Session, *, full: bool = False, tensor_count: int | None = None,
                       tensor_list: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON contract of ``register --json`` / ``list adapters --json`` / ``show --json``."""
        cfg = a.peft_config or {}
        if full and tensor_list is None:
            tensor_list = _tensor_lists(s, [a.id])[a.id]
        if tensor_count is None and tensor_list is not None:
            tensor_count = len(tensor_list)
        if tensor_count is None:
            tensor_count = s.scalar(select(func.count()).select_from(AdapterTensor)
                                    .where(AdapterTensor.adapter_id == a.id))
        rec: dict[str, Any] = {
            "id": a.id, "name": a.name, "version": a.version, "ref": f"{a.name}@{a.version}",
            "sha256": a.sha256, "config_sha256": a.config_sha256, "size": a.size, "rank": a.rank, "lora_alpha": a.alpha, "dtype": a.dtype,
            "status": a.status, "tensors": tensor_count,
            "target_modules": sorted(cfg["target_modules"]) if isinstance(cfg.get("target_modules"), list)
            else (cfg.get("target_modules") or _leaf_targets(s, a.id)),
            "use_rslora": bool(cfg.get("use_rslora")), "use_dora": bool(cfg.get("use_dora")),
            "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")), "base_hint": a.base_hint, "tags": a.tags or {},
            "source_uri": a.source_uri, "created_at": a.created_at.isoformat() + "Z",
            "store_path": str(self.store.path_for(a.sha256)),
        }
        if full:
            rec["peft_config"], rec["tensor_list"] = a.peft_config, tensor_list
        return rec

    def adapter_tensors(self, ref: str) -> tuple[dict[str, Any], list[AdapterTensor]]:
        with self.session() as s:
            a = self._adapter_query(s, ref)
            ts = list(s.scalars(select(AdapterTensor).where(AdapterTensor.adapter_id == a.id)
                                .order_by(AdapterTensor.key)))
            return self.adapter_record(a, s, tensor_count=len(ts)), ts

    # -- bases ------------------------------------------------------------------------------------
    def register_base(self, graphs: Sequence[tuple[str, str | Path]], *, name: str, version: str | None = None,
                      max_rank: int | None = None, precision: str | None = None, sdk_version: str | None = None,
                      alpha_input: str = "lora_alpha", allow_empty: bool = False, link: bool = False,
                      quant_updatable_mode: str = "none", kinds: dict[str, str] | None = None,
                      details: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """Register one graph or a multi-graph context (prefill/decode, parts) as a base model."""
        from loramgr.base import inspect_base

        name = check_name(name, "base name")
        if version is not None:
            version = check_version(version)
        if not graphs:
            raise UsageError("base register", "give an ONNX file or at least one --graph NAME=PATH")
        spec = inspect_base(graphs, max_rank=max_rank, precision=precision, alpha_input=alpha_input,
                            allow_empty=allow_empty, kinds=kinds)
        points = (details or {}).get("quantization_points") or []
        if points:
            from loramgr.formats.onnx_graph import node_outputs

            known = set().union(*(node_outputs(g.path) for g in spec.graphs))
            missing = sorted(set(points) - known)
            if missing:
                raise InvalidInputError(str(spec.graphs[0].path), f"--quant-point {missing[0]}: no node of the "
                                        "graphs produces this tensor")
        stored: list[StoredObject] = []
        with self.store.guard():
            return self._store_base(spec, stored, link, name, version, sdk_version, quant_updatable_mode, details)

    def _store_base(self, spec: Any, stored: list[StoredObject], link: bool, name: str, version: str | None,
                    sdk_version: str | None, quant_updatable_mode: str,
                    details: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        try:
            for g in spec.graphs:
                stored.append(obj := self.store.ingest(g.path, link=link))
                g.sha256, g.size = obj.sha256, obj.size
                for ext in g.external:
                    stored.append(eobj := self.store.ingest(g.path.parent / ext["location"], link=link))
                    ext["sha256"], ext["size"] = eobj.sha256, eobj.size
            return self.retrying(lambda s: self._insert_base(s, spec, name, version, sdk_version,
                                                             quant_updatable_mode, details or {}))
        except BaseException:
            for obj in stored:
                if obj.created:
                    self._drop_unreferenced(obj.sha256)
            raise

    def _insert_base(self, s: Session, spec: Any, name: str, version: str | None, sdk_version: str | None,
                     qmode: str, details: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        fingerprint = spec.fingerprint()
        for b in s.scalars(select(BaseModel).where(BaseModel.name == name)):
            if b.details.get("fingerprint") == fingerprint and (version is None or b.version == version):
                return self.base_record(b) | {"already_registered": True}, False
        if version is None:
            nums = [int(v) for v in s.scalars(select(BaseModel.version).where(BaseModel.name == name))
                    if v.isdigit()]
            version = str(max(nums, default=0) + 1)
        elif s.scalar(select(BaseModel.id).where(BaseModel.name == name, BaseModel.version == version)):
            raise ConflictError(f"base {name}@{version}", "already registered with other graphs")
        b = BaseModel(name=name, version=version, sdk_version=sdk_version, precision=spec.precision,
                      max_rank=spec.max_rank, alpha_tensor=spec.alpha_input, quant_updatable_mode=qmode,
                      status="active", details={"fingerprint": fingerprint, **details})
        for i, g in enumerate(spec.graphs):
            b.graphs.append(Graph(name=g.name, position=i, kind=g.kind, onnx_sha256=g.sha256, size=g.size,
                                  path=str(g.path.absolute()), file_name=g.path.name, external_data=g.external,
                                  io=g.io))
        for ap in spec.attachment_points.values():
            b.attachment_points.append(AttachmentPoint(
                module_path=ap.module_path, tensor_a=ap.tensor_a, tensor_b=ap.tensor_b,
                in_features=ap.in_features, out_features=ap.out_features, rank=ap.rank, dtype=ap.dtype,
                graphs=sorted(spec.ap_graphs[ap.module_path], key=spec.graph_order.index)))
        s.add(b)
        s.flush()
        self.event(s, "register", f"base:{name}@{version}", graphs=[g.name for g in spec.graphs],
                   attachment_points=len(spec.attachment_points))
        return self.base_record(b), True

    def _base_query(self, s: Session, ref: str) -> BaseModel:
        name, version = _split_ref(ref)
        q = select(BaseModel).where(BaseModel.name == name).options(
            selectinload(BaseModel.graphs), selectinload(BaseModel.attachment_points))
        if version is not None:
            b = s.scalar(q.where(BaseModel.version == version))
        else:
            b = s.scalar(q.order_by(BaseModel.id.desc()).limit(1))
        if b is None:
            raise NotFoundError(f"base {ref}", "not in the registry", hint="see `loramgr list bases`")
        return b

    def base(self, ref: str) -> dict[str, Any]:
        with self.session() as s:
            return self.base_record(self._base_query(s, ref), full=True)

    def bases(self) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(BaseModel).order_by(BaseModel.name, BaseModel.id).options(
                selectinload(BaseModel.graphs), selectinload(BaseModel.attachment_points))
            return [self.base_record(b) for b in s.scalars(q)]

    def base_record(self, b: BaseModel, *, full: bool = False) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": b.id, "name": b.name, "version": b.version, "ref": f"{b.name}@{b.version}",
            "graphs": [g.name for g in b.graphs], "attachment_points": len(b.attachment_points),
            "max_rank": b.max_rank, "precision": b.precision, "sdk_version": b.sdk_version,
            "alpha_tensor": b.alpha_tensor, "quant_updatable_mode": b.quant_updatable_mode, "status": b.status,
            "created_at": b.created_at.isoformat() + "Z",
        }
        if full:
            rec["fingerprint"] = (b.details or {}).get("fingerprint")
            rec["export"] = (b.details or {}).get("export")  # `base export` manifest, if exported
            rec["quantization_points"] = (b.details or {}).get("quantization_points") or []
            rec["graph_list"] = [{"name": g.name, "kind": g.kind, "sha256": g.onnx_sha256, "size": g.size,
                                  "file_name": g.file_name, "io": g.io,
                                  "path": g.path, "external_data": g.external_data} for g in b.graphs]
            rec["attachment_point_list"] = [
                {"module_path": ap.module_path, "tensor_a": ap.tensor_a, "tensor_b": ap.tensor_b,
                 "in_features": ap.in_features, "out_features": ap.out_features, "rank": ap.rank,
                 "dtype": ap.dtype, "graphs": ap.graphs} for ap in b.attachment_points]
        return rec

    def adapter_encodings(self, adapter_id: int | None, base_id: int) -> dict[str, Any]:
        """AIMET-layout encodings of an adapter (``None``: the base's own) on a base; {} if none."""
        from loramgr.registry.encodings import load

        return load(self, base_id, adapter_id)

    # -- validation ---------------------------------------------------------------------------------
    def record_validation(self, adapter_id: int, base_id: int, ok: bool, problems: list[dict[str, Any]]) -> None:
        """Keep the outcome; a pass moves a ``registered`` adapter to ``validated``."""

        def write(s: Session) -> None:
            s.add(Validation(adapter_id=adapter_id, base_id=base_id, ok=ok, problems=problems))
            a = s.get(Adapter, adapter_id)
            b = s.get(BaseModel, base_id)
            assert a is not None and b is not None
            subject = f"adapter:{a.name}@{a.version}"
            if ok and a.status == "registered":
                a.status = "validated"
                self.event(s, "status", subject, old="registered", new="validated", base=f"{b.name}@{b.version}")
            self.event(s, "validate", subject, base=f"{b.name}@{b.version}", ok=ok,
                       problems=[p["code"] for p in problems])

        self.retrying(write)

    def validated_adapter_ids(self, base_id: int) -> set[int]:
        """Adapters whose newest validation against ``base_id`` passed."""
        with self.session() as s:
            rows = s.execute(select(Validation.adapter_id, Validation.ok).where(Validation.base_id == base_id)
                             .order_by(Validation.id)).all()
        latest: dict[int, bool] = {}
        for aid, ok in rows:
            latest[aid] = ok
        return {aid for aid, ok in latest.items() if ok}

    def resolve(self, ref: str) -> tuple[str, dict[str, Any]]:
        """``show REF``: an adapter if one matches, else a base."""
        try:
            return "adapter", self.adapter(ref)
        except NotFoundError:
            try:
                return "base", self.base(ref)
            except NotFoundError:
                raise NotFoundError(ref, "no adapter or base with this name, NAME@VERSION or sha256 prefix") from None


def _leaf_targets(s: Session, adapter_id: int) -> list[str]:
    from loramgr.mapping import module_leaf_names, group_pairs

    keys = s.scalars(select(AdapterTensor.key).where(AdapterTensor.adapter_id == adapter_id)).all()
    return module_leaf_names(group_pairs(keys))


__all__ = ["Registry"]
