"""The runtime query API over a ``plan.json``: stdlib only (no SQLAlchemy, onnx or torch), so that
device-side Python and tooling can import it cheaply.

    plan = Plan.load("out/plan.json")
    plan.adapters                       # adapter names (refs where a name has several versions)
    plan.adapter("chat").sections("prefill")
    plan.adapter("chat").io_encodings("logits")   # scale/offset/bitwidth/min/max, or None
    plan.steps("chat")                  # ordered runtime steps
    plan.default_adapter

Checksums are verified lazily, the first time a file is used, and a mismatch raises
:class:`PlanIntegrityError` naming the file (the CLI maps it to exit 8).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramgr.infra.files import read_bytes
from loramgr.kinds import OwnerType, SectionKind
from loramgr.runtime.errors import PlanFormatError, PlanIntegrityError, PlanLookupError, PlanValueError
from loramgr.runtime.structure import check_structure, malformed

try:
    from loramgr.infra.gcpause import gc_paused
except ImportError:  # pragma: no cover - runtime vendored alone: no pause

    def gc_paused(fn: Any) -> Any:  # type: ignore[misc]
        return fn


MAX_PLAN_BYTES = 256 * 1024 * 1024


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class FileRef:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Owner:
    """Whose a section is, as the plan says (``{"type", "name"}``)."""

    type: OwnerType
    name: str


@dataclass(frozen=True)
class Section(FileRef):
    name: str = ""
    graphs: tuple[str, ...] = ()
    shared: bool = False
    kind: SectionKind | None = None  # None: a plan written before sections carried their kind
    owner: Owner | None = None


class _Verifier:
    """Integrity of the files a plan lists, checked once per file identity: a file is hashed the
    first time it is used and again whenever its identity (device, inode, size, mtime, ctime)
    changes; otherwise a stat is enough. So a section evicted from a session's cache loads again
    without re-hashing, and a file replaced or rewritten after its first check is caught."""

    def __init__(self) -> None:
        self._ok: dict[Path, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def check(self, f: FileRef) -> Path:
        try:
            st = f.path.stat()
        except FileNotFoundError:
            raise PlanIntegrityError(str(f.path), "file listed in the plan is missing") from None
        except OSError as e:
            raise PlanFormatError(str(f.path), f"cannot read a file the plan lists: {e.strerror or e}") from None
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._ok.get(f.path) == identity:
            return f.path
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the hash forever
            raise PlanFormatError(str(f.path), "a file the plan lists is not a regular file")
        try:
            digest = _sha256(f.path) if st.st_size == f.size else ""
        except OSError as e:
            raise PlanFormatError(str(f.path), f"cannot read a file the plan lists: {e.strerror or e}") from None
        if st.st_size != f.size or digest != f.sha256:
            with self._lock:
                self._ok.pop(f.path, None)
            raise PlanIntegrityError(str(f.path), "does not match the sha256/size recorded in the plan")
        with self._lock:
            self._ok[f.path] = identity
        return f.path


class AdapterEntry:
    def __init__(self, plan: Plan, doc: dict[str, Any], is_default: bool = False) -> None:
        self._plan, self.doc = plan, doc
        self.name = doc.get("name", "default")
        self.ref = doc.get("ref", "default")
        self.is_default = is_default
        self._sections = [plan._section(s) for s in doc["sections"]]

    def __repr__(self) -> str:
        return f"AdapterEntry({self.ref!r})"

    def sections(self, graph: str | None = None) -> list[Section]:
        """Sections to apply (for one graph, or all)."""
        return [s for s in self._sections if graph is None or graph in s.graphs]

    def section_for(self, graph: str) -> Section:
        secs = self.sections(graph)
        if not secs:
            raise PlanLookupError(f"adapter {self.ref}", f"has no section for graph {graph!r}")
        return secs[0]

    def io_encodings(self, tensor: str | None = None) -> dict[str, Any] | None:
        """The I/O tensor encodings to set after applying this adapter (all, or one tensor's)."""
        enc = self.doc.get("io_encodings") or {}
        if tensor is None:
            return enc
        e = enc.get(tensor)
        if isinstance(e, list):
            return e[0] if e and isinstance(e[0], dict) else None
        return e if isinstance(e, dict) else None

    def weight_encodings(self) -> dict[str, Any]:
        return self.doc.get("weight_encodings") or {}

    @property
    def recommended_alpha(self) -> float:
        return float(self.doc.get("recommended_alpha", 1.0))

    def steps(self) -> list[dict[str, Any]]:
        return list(self.doc.get("steps", []))

    @property
    def adapters(self) -> dict[str, int]:
        """Adapter -> alpha slot (an adapter alone is a use case of one: itself in slot 0)."""
        return {self.ref: 0} if not self.is_default else {}

    @property
    def alphas(self) -> list[float]:
        """Default alpha per slot."""
        return [self.recommended_alpha] if not self.is_default else []

    @property
    def group(self) -> str | None:
        """The group whose quantization parameters it shares (its weights sections hold codes only);
        None for an entry outside any group (adapters alone, the default adapter)."""
        g = self.doc.get("group")
        return g if isinstance(g, str) else None

    def group_sections(self, graph: str | None = None) -> list[Section]:
        """The group's quantization sections, applied before the entry's own when the group changes
        (none outside a group)."""
        return [s for s in self._plan.group_sections(self.group) if graph is None or graph in s.graphs]

    @property
    def is_use_case(self) -> bool:
        return False

    def slot_of(self, adapter: str) -> int:
        """The alpha slot of ``adapter`` (NAME@VERSION, or its bare name when unique) in this entry."""
        slots = self.adapters
        if adapter in slots:
            return slots[adapter]
        by_name = [s for ref, s in slots.items() if ref.rsplit("@", 1)[0] == adapter]
        if len(by_name) == 1:
            return by_name[0]
        raise PlanLookupError(
            f"adapter {adapter}", f"is not in {self.ref} (its adapters: {', '.join(slots) or 'none'})"
        )


class UseCaseEntry(AdapterEntry):
    """Adapters active together: ``adapters`` maps each to its alpha slot, ``alphas`` their defaults."""

    def __repr__(self) -> str:
        return f"UseCaseEntry({self.ref!r})"

    @property
    def adapters(self) -> dict[str, int]:
        return {a["name"]: int(a["slot"]) for a in self.doc["adapters"]}

    @property
    def alphas(self) -> list[float]:
        return [float(a) for a in self.doc.get("alphas") or [1.0] * len(self.doc["adapters"])]

    @property
    def hot(self) -> bool:
        """Switched by alpha alone: one section holds every adapter (``LoraSession.select``)."""
        return bool(self.doc.get("hot"))

    @property
    def is_use_case(self) -> bool:
        return True


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the plan: every key once (Python's json keeps the last of two, cJSON the first,
    so the two readers would apply different files) and no NUL in a key or a text value (C strings end
    there: the C reader would read ``"a\\u0000evil"`` as ``"a"``)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError(
            f"an object lists a key twice ({sorted(k for k in d if sum(1 for q, _ in pairs if q == k) > 1)[0]!r})"
        )
    if any("\0" in k or (isinstance(v, str) and "\0" in v) for k, v in pairs):
        raise ValueError("a key or a text holds a NUL character")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the C reader refuses it too)")


def parse_plan_json(text: str) -> Any:
    """A plan's JSON as both readers accept it: no duplicate keys, no NUL in a text, no NaN/Infinity
    (``ValueError`` otherwise). ``Plan.load`` and ``bundle check`` parse with it."""
    return json.loads(text, object_pairs_hook=_distinct_keys, parse_constant=_no_constant)


class Plan:
    """A loaded plan; immutable, thread-safe."""

    def __init__(self, doc: dict[str, Any], root: Path) -> None:
        self.doc, self.root = doc, root
        self._real_dirs: dict[str, str] = {"": os.path.realpath(root)}  # plan-relative dir -> real path
        self._verifier = _Verifier()
        self.base = doc["base"]
        self.alpha = doc["alpha"]
        self.rules = doc["rules"]
        check_structure(doc, str(root))
        self.graphs = {g["name"]: g for g in self.base["graphs"]}
        for g in self.graphs.values():  # every path is checked at load, not when first used
            self.file(g)
            for e in g.get("external_data", []):
                self.file(e)
        self._target_files()  # so are the compiled targets' (the C reader refuses them at open too)
        entries = [AdapterEntry(self, a) for a in doc["adapters"]]
        counts = collections.Counter(e.name for e in entries)  # a bare name works when it is unique
        self._by_key: dict[str, AdapterEntry] = {}
        for e in entries:
            self._by_key[e.ref] = e
            if counts[e.name] == 1:
                self._by_key[e.name] = e
        self.adapters: tuple[str, ...] = tuple(e.name if counts[e.name] == 1 else e.ref for e in entries)
        self.default_adapter = AdapterEntry(
            self, doc["default_adapter"] | {"name": "default", "ref": "default"}, is_default=True
        )
        self._use_cases = {u["name"]: UseCaseEntry(self, u) for u in doc.get("use_cases", [])}
        self.use_cases: tuple[str, ...] = tuple(self._use_cases)
        with malformed(str(root)):
            self._groups = {g["name"]: [self._section(s) for s in g["sections"]] for g in doc.get("groups") or []}
        for u in self._use_cases.values():
            if u.group is not None and u.group not in self._groups:
                raise PlanFormatError(str(root), f"use case {u.name!r} names group {u.group!r}, which the plan lacks")
        clash = sorted(set(self._use_cases) & set(self._by_key))
        if clash:
            raise PlanFormatError(str(root), f"use case {clash[0]!r} has the name of an adapter")
        #: alpha slots N (alpha input [1, N]); None: one scalar alpha
        self.alpha_slots: int | None = self.alpha.get("slots")

    @classmethod
    @gc_paused
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path).absolute()
        if not p.exists():
            raise PlanFormatError(str(p), "no such plan file")
        try:
            doc = parse_plan_json(read_bytes(p, MAX_PLAN_BYTES, "plan file").decode("utf-8"))
        except RecursionError:
            raise PlanFormatError(str(p), "plan JSON is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise PlanFormatError(str(p), f"not a JSON plan ({e})") from None
        return cls.from_doc(doc, p.parent, where=str(p))

    @classmethod
    @gc_paused
    def from_doc(cls, doc: Any, root: Path, *, where: str) -> Plan:
        """A plan from its parsed JSON, its paths relative to ``root`` (``bundle check`` applies the
        loader's rules to a plan inside a tar this way)."""
        if not isinstance(doc, dict) or doc.get("schema") != "loramgr.plan":
            raise PlanFormatError(where, "not a loramgr plan (schema field missing)")
        if doc.get("schema_version") not in (1, 2):
            raise PlanFormatError(where, f"plan schema version {doc.get('schema_version')!r} is not supported (1, 2)")
        with malformed(where):
            return cls(doc, root)

    def resolve(self, rel: str) -> Path:
        """A plan path as an absolute path; paths leaving the plan's directory are refused (a NUL in
        one never gets here: the loader refuses it in every text)."""
        if (
            not isinstance(rel, str)
            or not rel
            or rel.startswith("/")
            or "\\" in rel
            or "\0" in rel
            or ".." in rel.split("/")
        ):
            raise PlanFormatError(str(self.root), f"plan path {rel!r} escapes the plan directory")
        full = self.root / rel
        real = self._real(rel)
        root = self._real_dirs[""]
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise PlanFormatError(str(self.root), f"plan path {rel!r} resolves outside the plan directory")
        return full

    def _real(self, rel: str) -> str:
        """``realpath(root / rel)``, one component at a time with the directories' answers kept: a
        plan of 100k adapters has 100k section paths under a few hundred directories, and realpath
        re-reads every ancestor of every path (most of ``Plan.load``'s time). A component that is a
        symlink is resolved in full, so the answer is realpath's."""
        parts = [c for c in rel.split("/") if c not in ("", ".")]
        done = ""
        real = self._real_dirs[""]
        for k, name in enumerate(parts):
            key = f"{done}/{name}" if done else name
            last = k == len(parts) - 1
            hit = None if last else self._real_dirs.get(key)
            if hit is None:
                joined = os.path.join(real, name)
                hit = os.path.realpath(joined) if os.path.islink(joined) else joined
                if not last:
                    self._real_dirs[key] = hit
            real, done = hit, key
        return real

    def _section(self, s: dict[str, Any]) -> Section:
        with malformed(str(self.root)):
            return Section(
                self.resolve(s["path"]),
                s["sha256"],
                int(s["size"]),
                s.get("name", ""),
                tuple(s["graphs"]),
                bool(s.get("shared")),
                SectionKind(s["kind"]) if "kind" in s else None,
                Owner(OwnerType(s["owner"]["type"]), s["owner"]["name"]) if s.get("owner") else None,
            )

    def file(self, entry: dict[str, Any]) -> FileRef:
        with malformed(str(self.root)):
            return FileRef(self.resolve(entry["path"]), entry["sha256"], int(entry["size"]))

    def verified(self, f: FileRef) -> Path:
        """The file's path after checking its size and sha256 (once per file)."""
        return self._verifier.check(f)

    def graph_file(self, name: str) -> Path:
        g = self.graphs[name]
        with malformed(str(self.root)):
            for e in g.get("external_data", []):
                self.verified(self.file(e))
        return self.verified(self.file(g))

    @property
    def targets(self) -> dict[str, Any]:
        """HTP targets the base was compiled for (``build --backend qnn-ep``): name -> entry."""
        t = self.doc.get("targets") or {}
        return t if isinstance(t, dict) else {}

    def target(self, name: str) -> dict[str, Any]:
        try:
            t = self.targets[name]
        except KeyError:
            have = ", ".join(self.targets) or "none: build with --backend qnn-ep --target"
            raise PlanLookupError(f"target {name}", f"is not in the plan (have: {have})") from None
        if not isinstance(t, dict) or not isinstance(t.get("graphs"), dict):
            raise PlanFormatError(str(self.root), f"target {name!r} is malformed")
        return t

    def target_graph_file(self, target: str, graph: str, *, shared: bool) -> Path:
        """The compiled graph of ``target`` (``shared``: the weight-shared context a device loads;
        otherwise the graph compiled alone, which the x86 simulator loads), its context files checked."""
        g = self.target(target)["graphs"].get(graph)
        if not isinstance(g, dict):
            raise PlanLookupError(f"graph {graph}", f"was not compiled for target {target}")
        with malformed(str(self.root)):
            model, files = self._compiled(g, unshared=not shared and "unshared_path" in g)
        for f in files:
            self.verified(f)
        return self.verified(model)

    def _compiled(self, g: dict[str, Any], *, unshared: bool) -> tuple[FileRef, list[FileRef]]:
        """A compiled graph entry's model and context files: the (weight-shared) ``path`` and ``files``,
        or the ``unshared_*`` ones."""
        key = "unshared_" if unshared else ""
        model = self.file({k: g[f"{key}{k}"] for k in ("path", "sha256", "size")})
        return model, [self.file(f) for f in g[f"{key}files"]]

    def adapter(self, name: str) -> AdapterEntry:
        if name in ("default", "default_adapter"):
            return self.default_adapter
        try:
            return self._by_key[name]
        except KeyError:
            raise PlanLookupError(
                f"adapter {name}", f"is not in the plan (have: {', '.join(self.adapters)}, default)"
            ) from None

    def use_case(self, name: str) -> UseCaseEntry:
        """A use case: ``.adapters`` (name -> slot), ``.alphas``, ``.sections(graph)``, ``.io_encodings(t)``."""
        try:
            return self._use_cases[name]
        except KeyError:
            raise PlanLookupError(
                f"use case {name}", f"is not in the plan (have: {', '.join(self.use_cases) or 'none'})"
            ) from None

    def entry(self, name: str) -> AdapterEntry:
        """An adapter, a use case or the default adapter by name (what ``LoraSession.apply`` takes)."""
        if name in self._use_cases:
            return self._use_cases[name]
        try:
            return self.adapter(name)
        except PlanLookupError:
            have = ", ".join([*self.adapters, *self.use_cases, "default"])
            raise PlanLookupError(f"adapter {name}", f"is not in the plan (have: {have})") from None

    def group_sections(self, group: str | None) -> list[Section]:
        """A group's quantization sections (none for None or a group without them)."""
        return list(self._groups.get(group, [])) if group else []

    def steps(self, name: str) -> list[dict[str, Any]]:
        return self.entry(name).steps()

    def reset_steps(self, method: str = "default_adapter") -> list[dict[str, Any]]:
        return list(self.doc["reset_steps"][method])

    def files(self) -> list[FileRef]:
        """Every file the plan references (graphs, external data, sections, compiled targets)."""
        out: list[FileRef] = []
        with malformed(str(self.root)):
            for g in self.base["graphs"]:
                out.append(self.file(g))
                out += [self.file(e) for e in g.get("external_data", [])]
        out += self._target_files()
        for key in self.adapters:
            out += self.adapter(key).sections()
        for uc in self._use_cases.values():
            out += uc.sections()
        for secs in self._groups.values():
            out += secs
        out += self.default_adapter.sections()
        seen: dict[Path, FileRef] = {}
        for f in out:
            seen.setdefault(f.path, f)
        return list(seen.values())

    def _target_files(self) -> list[FileRef]:
        """The compiled targets' models and context files, every path resolved (and so checked)."""
        out: list[FileRef] = []
        with malformed(str(self.root)):
            for name in self.targets:
                for g in self.target(name)["graphs"].values():
                    for unshared in (False, True) if "unshared_path" in g else (False,):
                        model, files = self._compiled(g, unshared=unshared)
                        out += [model, *files]
        return out

    def verify(self) -> list[Path]:
        return [self.verified(f) for f in self.files()]


__all__ = [
    "Plan",
    "AdapterEntry",
    "UseCaseEntry",
    "Section",
    "FileRef",
    "PlanIntegrityError",
    "PlanFormatError",
    "PlanLookupError",
    "PlanValueError",
    "parse_plan_json",
]
