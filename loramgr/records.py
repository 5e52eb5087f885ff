"""The domain records: frozen dataclasses that the registry returns and the library passes around.

Why frozen: a record is a snapshot of registry rows. Code that needs a variant (a build at another
precision) makes one with :func:`dataclasses.replace`, so no function ever sees a record change
shape under it. Why ``to_json``: the CLI's ``--json`` output is a contract (names and layout); each
record renders that contract in one place instead of every command building dicts.

Records hold no database session and import nothing heavy; only :mod:`loramgr.registry` builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from loramgr.formats.peft import LoraConfig, Scaling
from loramgr.formats.safetensors import TensorInfo
from loramgr.kinds import OwnerType, SectionKind

__all__ = [
    "ADAPTER_STATUSES",
    "Adapter",
    "Artifact",
    "AttachmentPoint",
    "Base",
    "Build",
    "EncodingSet",
    "Event",
    "ExternalData",
    "FileKind",
    "Graph",
    "JsonRecord",
    "OwnerType",
    "SectionKind",
    "SectionOwner",
    "TensorInfo",
    "ref_of",
]

#: an adapter's stages, in order (registered -> validated -> built -> deployed -> retired)
ADAPTER_STATUSES = ("registered", "validated", "built", "deployed", "retired")

#: AIMET's encoding entry (bitwidth, dtype, is_symmetric, min, max, scale, offset): file data, kept as parsed.
EncodingEntry = Mapping[str, Any]


def ref_of(name: str, version: str) -> str:
    """``NAME@VERSION``, the one spelling of a registry reference."""
    return f"{name}@{version}"


def _plain(v: Any) -> Any:
    """A JSON-ready copy: records -> dicts, tuples -> lists, paths -> strings, mappings copied."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        if isinstance(v, JsonRecord):
            return v.to_json()
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


class JsonRecord:
    """Mixin: ``to_json()`` renders every field; records whose JSON contract differs override it."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


# -- encodings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodingSet(JsonRecord):
    """One owner's quantization encodings (an adapter's, or the base's own = the default adapter's).

    ``activation``: graph I/O tensors (set on the device after a section is applied);
    ``param``: LoRA weight inputs (one entry per output channel when per-channel).
    """

    activation: Mapping[str, Sequence[EncodingEntry]] = field(default_factory=dict)
    param: Mapping[str, Sequence[EncodingEntry]] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    version: str = "0.6.1"

    def __bool__(self) -> bool:
        return bool(self.activation or self.param)

    def to_aimet(self) -> dict[str, Any]:
        """AIMET's JSON layout (what ``encodings show --json`` prints and the QAIRT tools read)."""
        return {
            "version": self.version,
            "activation_encodings": _plain(self.activation),
            "param_encodings": _plain(self.param),
        }

    def to_json(self) -> dict[str, Any]:
        return self.to_aimet()

    def only(self, tensor: str) -> EncodingSet:
        """The entries of one tensor (either kind)."""
        return EncodingSet(
            {k: v for k, v in self.activation.items() if k == tensor},
            {k: v for k, v in self.param.items() if k == tensor},
            self.sources,
            self.version,
        )

    @classmethod
    def from_aimet(cls, doc: Mapping[str, Any], sources: Sequence[str] = ()) -> EncodingSet:
        """From a parsed AIMET document (:func:`loramgr.formats.encodings.parse` checked it)."""
        return cls(
            dict(doc.get("activation_encodings") or {}),
            dict(doc.get("param_encodings") or {}),
            tuple(sources),
            str(doc.get("version") or "0.6.1"),
        )


# -- adapters ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Adapter(JsonRecord):
    """A registered adapter. ``tensors`` is filled by full lookups (``Registry.adapter``), ``None`` in
    listings, which carry only ``tensor_count``."""

    id: int
    name: str
    version: str
    sha256: str
    config_sha256: str
    size: int
    rank: int | None
    lora_alpha: float | None
    dtype: str  # safetensors vocabulary (F32, F16, BF16, ...) or "mixed:..."
    status: str
    tensor_count: int
    target_modules: tuple[str, ...] | str
    base_hint: str | None
    tags: Mapping[str, str]
    source_uri: str
    created_at: str
    store_path: Path
    peft_config: LoraConfig | None = None  # the parsed adapter_config.json (None: registered without one)
    tensors: tuple[TensorInfo, ...] | None = None
    config_json: str | None = None  # adapter_config.json exactly as registered (None: registered without one)

    @property
    def ref(self) -> str:
        return ref_of(self.name, self.version)

    def config(self, key: str, default: Any = None) -> Any:
        """One field of the stored ``adapter_config.json`` (``None``/default without a config); fields
        loramgr does not model come from the config's ``extra``."""
        if self.peft_config is None:
            return default
        if key in LoraConfig.__dataclass_fields__ and key != "extra":
            return getattr(self.peft_config, key)
        return self.peft_config.extra.get(key, default)

    @property
    def scaling(self) -> Scaling:
        """PEFT's scaling terms for this adapter (its registered ``lora_alpha``; check_adapter
        refuses an adapter without one before anything scales it)."""
        cfg = self.peft_config or LoraConfig()
        return cfg.scaling(float(self.lora_alpha if self.lora_alpha is not None else 0.0))

    @property
    def use_rslora(self) -> bool:
        return bool(self.config("use_rslora"))

    @property
    def use_dora(self) -> bool:
        return bool(self.config("use_dora"))

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config("fan_in_fan_out"))

    def tensor_list(self) -> tuple[TensorInfo, ...]:
        if self.tensors is None:
            raise ValueError(f"adapter {self.ref}: record was fetched without its tensor list")
        return self.tensors

    def to_json(self, *, full: bool | None = None) -> dict[str, Any]:
        """The contract of ``register --json`` / ``list --json`` / ``show --json``."""
        rec: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "sha256": self.sha256,
            "config_sha256": self.config_sha256,
            "size": self.size,
            "rank": self.rank,
            "lora_alpha": self.lora_alpha,
            "dtype": self.dtype,
            "status": self.status,
            "tensors": self.tensor_count,
            "target_modules": _plain(self.target_modules),
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "fan_in_fan_out": self.fan_in_fan_out,
            "base_hint": self.base_hint,
            "tags": dict(self.tags),
            "source_uri": self.source_uri,
            "created_at": self.created_at,
            "store_path": str(self.store_path),
        }
        if full if full is not None else self.tensors is not None:
            rec["peft_config"] = self.peft_config.to_json() if self.peft_config else None
            rec["tensor_list"] = [
                {"key": t.key, "dtype": t.dtype, "shape": list(t.shape), "offsets": [t.begin, t.end]}
                for t in self.tensor_list()
            ]
        return rec


# -- bases -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalData(JsonRecord):
    """An ONNX external-data file of a graph (weights kept beside the graph)."""

    location: str
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True)
class Graph(JsonRecord):
    name: str
    kind: str  # prefill | decode | part | single
    sha256: str
    size: int
    file_name: str
    path: str  # where it was registered from (the store holds the bytes)
    io: Mapping[str, Any]  # {"inputs": {name: {dtype, shape}}, "outputs": {...}, "defaults": [...]}
    external_data: tuple[ExternalData, ...] = ()

    @property
    def inputs(self) -> Mapping[str, Any]:
        return self.io.get("inputs", {})  # type: ignore[no-any-return]

    @property
    def outputs(self) -> Mapping[str, Any]:
        return self.io.get("outputs", {})  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "file_name": self.file_name,
            "io": _plain(self.io),
            "path": self.path,
            "external_data": [e.to_json() for e in self.external_data],
        }


@dataclass(frozen=True)
class AttachmentPoint(JsonRecord):
    """Where a LoRA branch attaches: PEFT module path, its graph inputs (A ``[in, R]``, B ``[R, out]``)."""

    module_path: str
    tensor_a: str
    tensor_b: str
    in_features: int
    out_features: int
    rank: int
    dtype: str  # ONNX vocabulary of the LoRA inputs (float32, float16, int8, int16)
    graphs: tuple[str, ...] = ()
    tensor_indices: str | None = None  # int64 [1, R]: rank column -> alpha slot (bases with alpha slots)

    @property
    def tensors(self) -> tuple[str, str]:
        """The weight inputs (A, B)."""
        return self.tensor_a, self.tensor_b

    @property
    def updatable(self) -> tuple[str, ...]:
        """Every input a section sets: A, B and, with alpha slots, the slot map."""
        return self.tensors + ((self.tensor_indices,) if self.tensor_indices else ())


@dataclass(frozen=True)
class Base(JsonRecord):
    """A registered base: its graphs (one context) and attachment points."""

    id: int
    name: str
    version: str
    sdk_version: str | None
    precision: str  # fp32 | fp16 | int8 | int16
    max_rank: int
    alpha_tensor: str | None
    quant_updatable_mode: str
    status: str
    created_at: str
    graphs: tuple[Graph, ...]
    attachment_points: tuple[AttachmentPoint, ...]
    fingerprint: str | None = None
    export: Mapping[str, Any] | None = None  # the `base export` manifest, when exported
    quantization_points: tuple[str, ...] = ()
    max_adapters: int | None = None  # alpha slots N (use cases); None: one scalar alpha

    @property
    def ref(self) -> str:
        return ref_of(self.name, self.version)

    @property
    def graph_names(self) -> list[str]:
        return [g.name for g in self.graphs]

    def graph(self, name: str) -> Graph:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(name)

    def points_of(self, graph: str | None = None) -> list[AttachmentPoint]:
        """Attachment points (of one graph, or all), in registry order."""
        return [ap for ap in self.attachment_points if graph is None or graph in ap.graphs]

    @property
    def lora_inputs(self) -> set[str]:
        """Every LoRA weight input name (A and B of every attachment point)."""
        return {n for ap in self.attachment_points for n in ap.tensors}

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "graphs": self.graph_names,
            "attachment_points": len(self.attachment_points),
            "max_rank": self.max_rank,
            "precision": self.precision,
            "sdk_version": self.sdk_version,
            "alpha_tensor": self.alpha_tensor,
            "quant_updatable_mode": self.quant_updatable_mode,
            "status": self.status,
            "created_at": self.created_at,
            "max_adapters": self.max_adapters,
        }
        if full:
            rec["fingerprint"] = self.fingerprint
            rec["export"] = _plain(self.export)
            rec["quantization_points"] = list(self.quantization_points)
            rec["graph_list"] = [g.to_json() for g in self.graphs]
            rec["attachment_point_list"] = [ap.to_json() for ap in self.attachment_points]
        return rec


# -- use cases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UseCaseSlot(JsonRecord):
    slot: int
    adapter: str  # NAME@VERSION
    adapter_id: int
    default_alpha: float


@dataclass(frozen=True)
class UseCase(JsonRecord):
    """Adapters active together on one base (QNN LoRA v3): slot i is the i-th adapter, its rank columns
    concatenated after the previous ones' at every attachment point, scaled by alpha slot i."""

    id: int
    base: str  # NAME@VERSION of the base
    base_id: int
    name: str
    hot: bool  # switched by alpha alone: one section holds every adapter
    status: str
    created_at: str
    slots: tuple[UseCaseSlot, ...]
    group: str | None = None  # use cases of a group share quantization parameters

    @property
    def adapters(self) -> list[str]:
        return [s.adapter for s in self.slots]

    @property
    def alphas(self) -> list[float]:
        return [s.default_alpha for s in self.slots]

    def to_json(self) -> dict[str, Any]:
        """``usecase show/list --json``: the slots, and the adapters and alphas in slot order."""
        return {
            "id": self.id,
            "name": self.name,
            "base": self.base,
            "hot": self.hot,
            "group": self.group,
            "status": self.status,
            "created_at": self.created_at,
            "adapters": self.adapters,
            "alphas": self.alphas,
            "slots": [s.to_json() for s in self.slots],
        }


# -- builds ------------------------------------------------------------------------------------------
class FileKind(str, Enum):
    """Every other file a build records (graphs, SDK tool inputs and outputs, compiled contexts)."""

    GRAPH = "graph"
    GRAPH_DATA = "graph_data"
    WEIGHT_LIST = "weight_list"
    CONTEXT_BINARY = "context_binary"  # qairt: the generator's context binary
    DLC = "dlc"
    PREPARED_WEIGHTS = "prepared_weights"
    ENCODINGS = "encodings"
    IMPORTER_CONFIG = "importer_config"
    IMPORTER_OUTPUT = "importer_output"
    IMPORTED_WEIGHTS = "imported_weights"
    IMPORTED_ENCODINGS = "imported_encodings"
    ADAPTER_WEIGHT_CONFIG = "adapter_weight_config"
    CREATOR_INPUT = "creator_input"
    CREATOR_OUTPUT = "creator_output"
    LORA_CREATOR_CONFIG = "lora_creator_config"
    EP_CONTEXT_MODEL = "ep_context_model"  # qnn-ep: a compiled EPContext model (per target)
    EP_CONTEXT_BINARY = "ep_context_binary"  # qnn-ep: the context .bin it loads
    EP_ENCODINGS = "ep_encodings"  # qnn-ep, a quantized target: its LoRA inputs' encodings


ArtifactKind = SectionKind | FileKind


def artifact_kind(value: str) -> ArtifactKind:
    """A stored kind string back to its member (ValueError for one loramgr never writes)."""
    try:
        return SectionKind(value)
    except ValueError:
        return FileKind(value)


@dataclass(frozen=True)
class SectionOwner(JsonRecord):
    """The owner of a section (or of a file made for one owner, such as an SDK tool's input):
    one typed value instead of nullable adapter / use case / group fields."""

    type: OwnerType
    name: str  # adapter, use case or group name; "default" for the default adapter
    id: int | None = None  # the adapter's or use case's registry id
    version: str | None = None  # an adapter's version

    @classmethod
    def adapter(cls, a: Adapter) -> SectionOwner:
        return cls(OwnerType.ADAPTER, a.name, a.id, a.version)

    @classmethod
    def use_case(cls, uc: UseCase) -> SectionOwner:
        return cls(OwnerType.USE_CASE, uc.name, uc.id)

    @classmethod
    def group(cls, name: str) -> SectionOwner:
        return cls(OwnerType.GROUP, name)

    @property
    def ref(self) -> str:
        """``NAME@VERSION`` for an adapter, the name otherwise."""
        return ref_of(self.name, self.version or "") if self.type is OwnerType.ADAPTER else self.name

    @property
    def label(self) -> str:
        """How ``build --json`` names a job: the adapter's ref, ``usecase:NAME``, ``group:NAME`` or ``default``."""
        if self.type is OwnerType.USE_CASE:
            return f"usecase:{self.name}"
        if self.type is OwnerType.GROUP:
            return f"group:{self.name}"
        return self.ref if self.type is OwnerType.ADAPTER else "default"

    def to_json(self) -> dict[str, Any]:
        """The plan's ``owner``: ``{"type", "name"}`` (and an adapter's ``version``)."""
        out: dict[str, Any] = {"type": self.type.value, "name": self.name}
        return out | ({"version": self.version} if self.type is OwnerType.ADAPTER else {})


DEFAULT_OWNER = SectionOwner(OwnerType.DEFAULT, "default")


def section_name(graphs: Sequence[str]) -> str:
    """A section's name: the graph it serves, or ``A+B`` for a section shared by graphs A and B
    (the keys of :func:`loramgr.sections.layout.section_groups`)."""
    return "+".join(graphs)


@dataclass(frozen=True)
class Artifact(JsonRecord):
    """A file a build produced (section, super section, default section, graph copy, weight list, ...)."""

    kind: ArtifactKind
    graphs: tuple[str, ...]
    path: str
    sha256: str
    size: int
    cache_key: str | None = None
    owner: SectionOwner | None = None

    @property
    def is_section(self) -> bool:
        return isinstance(self.kind, SectionKind)

    @property
    def section(self) -> str | None:
        """The section's name (sections only)."""
        return section_name(self.graphs) if self.is_section else None

    def owner_of(self, t: OwnerType) -> SectionOwner | None:
        """The owner when it is of type ``t``."""
        return self.owner if self.owner is not None and self.owner.type is t else None

    def owned_by(self, t: OwnerType) -> str | None:
        """The owner's name when it is of type ``t``."""
        o = self.owner_of(t)
        return o.name if o else None

    @property
    def adapter_id(self) -> int | None:
        o = self.owner_of(OwnerType.ADAPTER)
        return o.id if o else None

    @property
    def use_case_id(self) -> int | None:
        o = self.owner_of(OwnerType.USE_CASE)
        return o.id if o else None

    @property
    def adapter_ref(self) -> str | None:
        o = self.owner_of(OwnerType.ADAPTER)
        return o.ref if o else None

    def to_json(self) -> dict[str, Any]:
        """The ``build --json`` artifact entry (``use_case`` / ``group`` only on their sections)."""
        out: dict[str, Any] = {
            "adapter": self.owned_by(OwnerType.ADAPTER),
            "graphs": list(self.graphs),
            "kind": self.kind.value,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
        }
        uc, group = self.owned_by(OwnerType.USE_CASE), self.owned_by(OwnerType.GROUP)
        out |= ({"use_case": uc} if uc else {}) | ({"group": group} if group else {})
        if self.owner is not None:
            out["owner"] = self.owner.to_json()
        return out | ({"section": self.section} if self.is_section else {})


@dataclass(frozen=True)
class Build(JsonRecord):
    """A build of a base: its backend, where it went and what it made."""

    id: int
    base_id: int
    status: str  # running | done | failed
    backend: str
    sdk_version: str | None
    share_adapters: bool
    precision: str
    out_dir: str
    inputs_hash: str
    artifacts: tuple[Artifact, ...]
    log: str


@dataclass(frozen=True)
class Event(JsonRecord):
    """One audit-trail entry: who did what to which subject, when."""

    at: str
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
