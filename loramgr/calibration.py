"""``loramgr calibrate``: per-adapter activation (and weight) encodings on the ORT reference runtime.

For the base alone (the default adapter) and for each adapter, the base graphs run on the
calibration set with the adapter's prepared LoRA tensors fed as inputs; the min/max of every float
graph input and output (except the LoRA inputs themselves) become asymmetric activation encodings,
and the prepared (scaled, zero-padded) weights get symmetric per-output-channel encodings. Inputs:

- ``.npz``: arrays named after graph inputs, the first axis indexing samples; every graph whose
  plain inputs are all present runs once per sample;
- ``.jsonl``: one ``{"input_ids": [...]}`` (or a bare list) per line, for exported LM bases; each
  sample runs prefill and then decode steps (so the decode graph's cache tensors are covered too).

Deterministic: same data, same encodings.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr import dtypes
from loramgr.errors import InvalidInputError, UsageError, first_line
from loramgr.formats.onnx_graph import with_extra_outputs
from loramgr.formats.quant import asymmetric, symmetric_per_channel
from loramgr.infra.files import regular_file
from loramgr.infra.progress import Progress
from loramgr.lora.inputs import prepared_inputs, prepared_with_ranks, section_inputs
from loramgr.lora.usecase import concat_inputs
from loramgr.records import Adapter, Base, EncodingSet, FileKind, JsonRecord, UseCase
from loramgr.runtime.generate import Runner, greedy
from loramgr.sections.layout import materialize_graphs, select_adapters

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

MAX_SAMPLES = 100_000


def load_data(path: str | Path) -> tuple[str, Any]:
    p = Path(path)
    if regular_file(p, "calibration file", missing_ok=True) is None:
        raise InvalidInputError(str(p), "no such calibration file")
    if p.suffix == ".npz":
        return "npz", _npz(p)
    samples = []
    for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, and integers too long to convert
            raise InvalidInputError(f"{p}:{i}", "not a JSON line") from None
        ids = obj.get("input_ids") if isinstance(obj, dict) else obj
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in ids)
        ):
            raise InvalidInputError(f"{p}:{i}", 'expected {"input_ids": [non-negative ints]}')
        samples.append(ids)
        if len(samples) > MAX_SAMPLES:
            raise InvalidInputError(str(p), f"more than {MAX_SAMPLES} samples")
    if not samples:
        raise InvalidInputError(str(p), "no samples")
    return "ids", samples


def _npz(p: Path) -> dict[str, np.ndarray]:
    """The arrays of a calibration ``.npz``: numbers only (no pickles), finite, one shared non-empty
    first (sample) axis."""
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile) as e:
        raise InvalidInputError(str(p), f"not a readable .npz without pickles ({type(e).__name__})") from None
    if not arrays:
        raise InvalidInputError(str(p), "holds no arrays")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InvalidInputError(str(p), f"array {k!r} holds {a.dtype}, not numbers")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InvalidInputError(str(p), f"array {k!r} holds NaN or Inf (the encodings would be NaN)")
        if a.dtype.kind == "i" and a.size and a.min() < 0:  # token ids, positions, masks: never negative
            raise InvalidInputError(str(p), f"array {k!r} holds a negative integer ({int(a.min())})")
    if any(a.ndim == 0 for a in arrays.values()) or len({a.shape[0] for a in arrays.values()}) != 1:
        raise InvalidInputError(str(p), "arrays must share a first (sample) axis")
    if next(iter(arrays.values())).shape[0] == 0:
        raise InvalidInputError(str(p), "holds no samples (the first axis is empty)")
    return arrays


#: ONNX Runtime's input types -> the numpy dtype a calibration array is converted to
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _feed(want: str, name: str, value: np.ndarray, source: str) -> np.ndarray:
    """A calibration array as the graph input ``name`` (of ONNX Runtime type ``want``) takes it:
    float64 data for a float32 input is converted, integers for integer inputs too; a float array for
    an integer input is refused."""
    dtype = _ORT_TYPES.get(want)
    if dtype is None or value.dtype == dtype:
        return value
    if np.dtype(dtype).kind == "i" and value.dtype.kind == "f":
        raise InvalidInputError(source, f"array {name!r} holds {value.dtype}; the graph's input is {want}")
    return value.astype(dtype)


class _Recorder:
    """min/max per float tensor name, over every run."""

    def __init__(self, skip: set[str]) -> None:
        self.skip = skip
        self.ranges: dict[str, tuple[float, float]] = {}

    def see(self, named: dict[str, np.ndarray]) -> None:
        for k, v in named.items():
            if k in self.skip or not np.issubdtype(np.asarray(v).dtype, np.floating):
                continue
            lo, hi = float(np.min(v)), float(np.max(v))
            if k in self.ranges:
                a, b = self.ranges[k]
                self.ranges[k] = (min(a, lo), max(b, hi))
            else:
                self.ranges[k] = (lo, hi)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_owner(
    sessions: dict[str, Any],
    kinds: dict[str, str],
    data: tuple[str, Any],
    lora: dict[str, np.ndarray],
    rec: _Recorder,
    progress: Any,
    label: str,
    source: str,
) -> None:
    # per session, read once (not per sample): input types, the LoRA feeds it takes, its output names
    types = {s: {i.name: i.type for i in s.get_inputs()} for s in sessions.values()}
    lora_of = {}
    for s in sessions.values():
        takes = {i.name for i in [*s.get_inputs(), *s.get_overridable_initializers()]}
        lora_of[s] = {k: v for k, v in lora.items() if k in takes}
    out_names = {s: [o.name for o in s.get_outputs()] for s in sessions.values()}

    def call(s: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: _feed(types[s].get(k, ""), k, np.asarray(v), source) for k, v in feeds.items()}
        try:
            outs: list[np.ndarray] = s.run(None, feeds | lora_of[s])
        except Exception as e:  # noqa: BLE001 - ORT's pybind11 errors: a sample of the wrong shape, a token id past the vocabulary
            raise InvalidInputError(source, f"ONNX Runtime cannot run a sample ({first_line(e)})") from None
        rec.see(feeds)
        rec.see(dict(zip(out_names[s], outs, strict=True)))
        return outs

    kind, payload = data
    if kind == "npz":
        n = next(iter(payload.values())).shape[0]
        ran = False
        for s in sessions.values():
            need = [i.name for i in s.get_inputs() if i.name not in lora]
            if not all(x in payload for x in need):
                continue
            ran = True
            for i in range(n):
                call(s, {x: payload[x][i] for x in need})
        if not ran:
            raise InvalidInputError(
                "calibration data",
                f"arrays {sorted(payload)} do not cover the inputs of any graph "
                f"({'; '.join(g + ': ' + ','.join(i.name for i in s.get_inputs()) for g, s in sessions.items())})",
            )
        progress.advance(label)
        return
    pre = [g for g in sessions if kinds[g] != "decode"]
    dec = [g for g in sessions if kinds[g] == "decode"]
    if not any("input_ids" in {i.name for i in sessions[g].get_inputs()} for g in pre):
        raise UsageError("calibrate --data *.jsonl", "needs an exported LM base (graphs with input_ids)")

    def runner(s: Any) -> Runner:
        return Runner.from_session(s, lambda feeds: call(s, feeds))

    runners = {g: runner(s) for g, s in sessions.items()}
    for ids in payload:
        greedy([runners[g] for g in pre], [runners[g] for g in dec] or None, ids, 2 if dec else 1)
    progress.advance(label)


def _alpha_input(base: Base, alphas: list[float]) -> np.ndarray:
    """The alpha input: ``[1]`` ones, or with alpha slots the vector (unused slots 0)."""
    if not base.max_adapters:
        return np.ones((1,), np.float32)
    v = np.zeros((1, base.max_adapters), np.float32)
    v[0, : len(alphas)] = alphas
    return v


@dataclass(frozen=True)
class OwnerCalibration(JsonRecord):
    adapter: str  # ref, "default" for the base's own, "usecase:NAME"
    activation_tensors: int
    param_tensors: int
    cosine: float | None = None  # --engine aimet: quantized simulation vs float logits on the calibration data


@dataclass(frozen=True)
class Calibration(JsonRecord):
    """What ``loramgr calibrate --json`` prints."""

    base: str
    data: str
    act_bits: int
    weight_bits: int
    adapters: list[OwnerCalibration]
    engine: str = "loramgr"  # or "aimet"
    scheme: str | None = None  # --engine aimet: w8a16, w8a8, w16a16


Owner = tuple[Adapter | None, UseCase | None]


def owners_of(reg: Registry, base: Base, adapters: list[Adapter]) -> list[Owner]:
    """Who gets encodings, in order: the base (default adapter), each adapter, each use case."""
    use_cases = reg.use_cases.list(base.ref) if base.max_adapters else []
    return [(None, None), *((a, None) for a in adapters), *((None, uc) for uc in use_cases)]


def owner_label(ad: Adapter | None, uc: UseCase | None) -> str:
    return f"usecase:{uc.name}" if uc else ad.ref if ad else "default"


def owner_prepared(reg: Registry, base: Base, ad: Adapter | None, uc: UseCase | None) -> dict[str, np.ndarray]:
    """An owner's prepared (float) LoRA inputs: none for the base, a use case's concatenated ranks."""
    if uc is not None:
        members = list(reg.adapter_many(uc.adapters).values())
        both = [prepared_with_ranks(m, base) for m in members]
        return concat_inputs(base, [p for p, _ in both], [r for _, r in both])
    return {} if ad is None else prepared_inputs(ad, base)


def owner_feeds(reg: Registry, base: Base, ad: Adapter | None, uc: UseCase | None) -> tuple[dict[str, np.ndarray], str]:
    """(the owner's float LoRA inputs with its alpha input, its label): what a quantization simulation
    is fed (its own quantizers play the integer codes)."""
    lora = dict(owner_prepared(reg, base, ad, uc))
    if base.alpha_tensor:
        lora[base.alpha_tensor] = _alpha_input(base, uc.alphas if uc else [1.0])
    return lora, owner_label(ad, uc)


def calibrate(
    reg: Registry,
    base_ref: str,
    refs: list[str] | None = None,
    *,
    all_: bool = False,
    data: str | Path,
    act_bits: int = 8,
    weight_bits: int = 8,
    per_tensor: bool = False,
    quiet: bool = False,
) -> Calibration:
    """Compute and store encodings for the base (default adapter) and each selected adapter."""
    if act_bits not in (8, 16) or weight_bits not in (8, 16):
        raise UsageError("--act-bits/--weight-bits", "must be 8 or 16")
    base = reg.base(base_ref)
    wbits = dtypes.int_bits(base.precision) or weight_bits  # an integer base fixes the weight bit width
    adapters = list(reg.adapter_many(select_adapters(reg, base, list(refs or []), all_)).values())
    payload = load_data(data)
    params = base.lora_inputs
    skip = params | {n + "_scale" for n in params} | ({base.alpha_tensor} if base.alpha_tensor else set())
    done: list[OwnerCalibration] = []
    with tempfile.TemporaryDirectory(prefix="loramgr-calib-") as tmp:
        files = materialize_graphs(reg, base, Path(tmp))
        paths = {f.graphs[0]: Path(tmp) / f.rel_path for f in files if f.kind is FileKind.GRAPH}
        points = list(base.quantization_points)
        if points:  # expose the declared intermediate tensors as extra outputs of a copy of each graph
            for g, p in list(paths.items()):
                q = p.with_name(f"{p.stem}.calib{p.suffix}")
                if with_extra_outputs(p, q, points):
                    paths[g] = q
        sessions = {g.name: _session(paths[g.name]) for g in base.graphs}
        kinds = {g.name: g.kind for g in base.graphs}
        owners = owners_of(reg, base, adapters)
        with Progress(len(owners), "calibrating", quiet) as progress:
            for ad, uc in owners:
                prepared = owner_prepared(reg, base, ad, uc)  # a use case: its ranks, at its default alphas
                params_enc = {
                    n: symmetric_per_channel(v, wbits, axis=1, per_tensor=per_tensor)
                    for n, v in sorted(prepared.items())
                    if n in params
                }
                # what the runtime will hold: quantized weights for integer bases, else the prepared ones
                lora = section_inputs(ad, base, EncodingSet({}, params_enc), prepared or None)
                if base.alpha_tensor:
                    lora[base.alpha_tensor] = _alpha_input(base, uc.alphas if uc else [1.0])
                rec = _Recorder(skip)
                _run_owner(
                    sessions,
                    kinds,
                    payload,
                    lora,
                    rec,
                    progress,
                    f"calibrated use case {uc.name}"
                    if uc
                    else "calibrated " + ("the base (default adapter)" if ad is None else ad.ref),
                    str(data),
                )
                enc = EncodingSet(
                    {t: [asymmetric(lo, hi, act_bits)] for t, (lo, hi) in sorted(rec.ranges.items())}, params_enc
                )
                reg.encodings.save(
                    base.id,
                    ad.id if ad else None,
                    enc,
                    "calibrate",
                    replace_all=True,
                    use_case_id=uc.id if uc else None,
                )
                done.append(OwnerCalibration(owner_label(ad, uc), len(enc.activation), len(enc.param)))
    return Calibration(base.ref, str(data), act_bits, wbits, done)
