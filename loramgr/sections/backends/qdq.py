"""Quantized HTP targets (``build --backend qnn-ep --precision qdq-u16u8|qdq-u8u8``): the base's graphs
as QDQ models for Qualcomm's HTP, with ONNX Runtime's QNN quantization tools, calibrated so that the
LoRA inputs' encodings cover every adapter the build has.

Measured with onnxruntime 1.32 / onnxruntime-qnn 2.7 on the demo's tiny Llama (docs/htp.md):

- The LoRA inputs must be required graph inputs when quantized (a default initializer is quantized as
  a weight, baked in) and stay so in the compiled model (zero defaults given back make QNN's input
  setup fail), so a runtime feeds the sections' tensors to them (``LoraSession`` does).
- The additive mask's fill, the float32 minimum, would give the ``scores + mask`` activation a range of
  1e38 and quantize every score to one level; it is clamped to a fill still far below any score
  (``MASK_FILL``) before calibration.
- Every LoRA input is calibrated over every adapter's own tensors (and the default adapter's zeros):
  MinMax calibration, so an adapter of the build never clips. ``lora_alpha`` gets the fixed range
  [0, ``MAX_ALPHA``]. A later adapter whose tensors fall outside is refused for the target.
- Activations with stored encodings (``calibrate --engine aimet``: the base's and each owner's own)
  take the union of their ranges instead of this calibration's: the QDQ model the target compiles
  uses AIMET's encodings (``stored_ranges``); the others are calibrated here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loramgr.errors import IncompatibleError, UsageError
from loramgr.records import EncodingSet

SCHEMES = {"qdq-u16u8": ("QUInt16", "QUInt8"), "qdq-u8u8": ("QUInt8", "QUInt8")}
#: the mask fill per activation width: exp(fill) is nil next to any real score, and the range stays fine
MASK_FILL = {"qdq-u16u8": -100.0, "qdq-u8u8": -20.0}
MAX_ALPHA = 2.0
PROMPTS = 4  # calibration prompts per adapter
#: how far past an encoding's range (in steps of its scale) a tensor may reach: rounding, not clipping
SLACK_STEPS = 0.5


@dataclass(frozen=True)
class Encoding:
    """A LoRA input's quantization in the QDQ model: the float range it can hold."""

    scale: float
    zero_point: int
    bits: int

    @property
    def rmin(self) -> float:
        return (0 - self.zero_point) * self.scale

    @property
    def rmax(self) -> float:
        return ((1 << self.bits) - 1 - self.zero_point) * self.scale


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise UsageError(f"--precision {scheme}", f"must be one of {', '.join(SCHEMES)}")


def clamp_mask(model: Any, fill: float) -> int:
    """Scalar float constants at or below -1e30 (the mask fill) become ``fill``; returns how many."""
    from onnx import TensorProto, numpy_helper

    done = 0
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims or [1])) == 1:
            a = numpy_helper.to_array(t)
            if float(a.ravel()[0]) <= -1e30:
                t.CopyFrom(numpy_helper.from_array(np.full(a.shape, fill, np.float32), t.name))
                done += 1
    return done


def _inputs(path: Path) -> dict[str, tuple[list[int], Any]]:
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    out = {}
    for i in m.graph.input:
        t = i.type.tensor_type
        out[i.name] = ([d.dim_value for d in t.shape.dim], helper.tensor_dtype_to_np_dtype(t.elem_type))
    return out


def calibration_feeds(
    graphs: Mapping[str, tuple[str, Path]], lora_sets: list[dict[str, np.ndarray]], vocab: int, seed: int = 0
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Feeds per graph (name -> (kind, float graph with required LoRA inputs)): seeded prompts, each
    run with every LoRA set; decode graphs get the cache the float prefill computed for the prompt,
    laid out as the runtime lays it (slot j holds position j)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    prefill = next((n for n, (k, _) in graphs.items() if k == "prefill"), None)
    if prefill is None or len(graphs) > 2 or any(k not in ("prefill", "decode") for k, _ in graphs.values()):
        raise UsageError("--precision qdq-*", "quantized targets take bases of one prefill and one decode graph")
    spec = {n: _inputs(p) for n, (_, p) in graphs.items()}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    pre = ort.InferenceSession(str(graphs[prefill][1]), sess_options=so, providers=["CPUExecutionProvider"])
    q = spec[prefill]["input_ids"][0][1]
    out: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in graphs}
    for lora in lora_sets:
        for _ in range(PROMPTS):
            n0 = int(rng.integers(max(1, q // 2), q + 1))
            ids = np.zeros((1, q), np.int64)
            ids[0, :n0] = rng.integers(0, vocab, n0)
            mask = np.zeros((1, q), np.int64)
            mask[0, :n0] = 1
            f = {"input_ids": ids, "attention_mask": mask, "position_ids": np.arange(q, dtype=np.int64)[None]}
            f = _rest(f | {k: v for k, v in lora.items() if k in spec[prefill]}, spec[prefill])
            out[prefill].append(f)
            res = dict(zip([o.name for o in pre.get_outputs()], pre.run(None, f), strict=True))
            for name, (kind, _) in graphs.items():
                if kind == "decode":
                    out[name].append(_decode_feed(spec[name], res, n0, lora))
    return out


def _decode_feed(
    spec: Mapping[str, tuple[list[int], Any]], res: Mapping[str, np.ndarray], n0: int, lora: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    past = spec["attention_mask"][0][1] - 1
    f: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in spec.items():
        if name.startswith("past_key_values."):
            buf = np.zeros(shape, dtype)
            present = res[name.replace("past_key_values.", "present.")]
            k = min(n0, past, present.shape[2])
            buf[:, :, :k] = present[:, :, :k]
            f[name] = buf
    mask = np.zeros((1, past + 1), np.int64)
    mask[0, :n0] = 1
    mask[0, past] = 1
    f |= {
        "input_ids": np.array([[int(np.argmax(res["logits"][0, n0 - 1]))]], np.int64),
        "attention_mask": mask,
        "position_ids": np.array([[n0]], np.int64),
    }
    return _rest(f | {k: v for k, v in lora.items() if k in spec}, spec)


def _rest(f: dict[str, np.ndarray], spec: Mapping[str, tuple[list[int], Any]]) -> dict[str, np.ndarray]:
    """Inputs no LoRA set names (the alpha): ones, the strength every section is built for."""
    return f | {n: np.ones(shape, dtype) for n, (shape, dtype) in spec.items() if n not in f}


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def stored_ranges(sets: Iterable[EncodingSet]) -> dict[str, tuple[float, float]]:
    """Per activation tensor, the union of the ranges the owners' stored encodings cover (AIMET's,
    from ``calibrate --engine aimet``): one QDQ model serves every adapter of the target, so each of
    its activations must hold what every owner's own encoding holds."""
    out: dict[str, tuple[float, float]] = {}
    for enc in sets:
        for name, entries in enc.activation.items():
            e = entries[0]
            if e.get("dtype", "int") != "int" or "min" not in e:
                continue
            lo, hi = float(e["min"]), float(e["max"])
            if name in out:
                lo, hi = min(lo, out[name][0]), max(hi, out[name][1])
            out[name] = (lo, hi)
    return out


def quantize_graph(
    src: Path,
    dest: Path,
    feeds: list[dict[str, np.ndarray]],
    scheme: str,
    alpha: str | None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> int:
    """``src`` (float, required LoRA inputs, mask clamped) -> the QDQ model ``dest`` (+ its data).
    ``ranges``: activation ranges to use instead of this calibration's (``stored_ranges``); returns how
    many of them name a tensor of the graph."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    act, weight = (getattr(QuantType, t) for t in SCHEMES[scheme])
    reader: Any = _Reader(feeds)
    overrides: dict[str, list[dict[str, Any]]] = {}
    if ranges:
        g = onnx.load(str(src), load_external_data=False).graph
        inits = {t.name for t in g.initializer}
        tensors = ({o for n in g.node for o in n.output} | {i.name for i in g.input}) - inits
        overrides = {
            n: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for n, (lo, hi) in ranges.items() if n in tensors
        }
    if alpha:
        overrides[alpha] = [{"rmin": np.float32(0.0), "rmax": np.float32(MAX_ALPHA)}]
    cfg = get_qnn_qdq_config(
        str(src),
        reader,
        calibrate_method=CalibrationMethod.MinMax,
        activation_type=act,
        weight_type=weight,
        init_overrides=overrides or None,
    )
    cfg.use_external_data_format = True
    quantize(str(src), str(dest), cfg)
    return len(overrides) - (1 if alpha else 0)


def lora_encodings(qdq: Path, names: Iterable[str]) -> dict[str, Encoding]:
    """Each named input's encoding: the QuantizeLinear that reads it, its scale and zero point."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qdq), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    wanted = set(names)
    out: dict[str, Encoding] = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in wanted and n.input[0] not in out:
            zp = numpy_helper.to_array(inits[n.input[2]])
            bits = 16 if zp.dtype in (np.uint16, np.int16) else 8
            scale = float(numpy_helper.to_array(inits[n.input[1]]).ravel()[0])
            out[n.input[0]] = Encoding(scale, int(zp.ravel()[0]), bits)
    return out


def write_encodings(path: Path, scheme: str, enc: Mapping[str, Mapping[str, Encoding]]) -> None:
    """``{"scheme", "graphs": {graph: {input: {scale, zero_point, bits, min, max}}}}``."""
    doc = {
        "scheme": scheme,
        "graphs": {
            g: {
                k: {"scale": e.scale, "zero_point": e.zero_point, "bits": e.bits, "min": e.rmin, "max": e.rmax}
                for k, e in sorted(per.items())
            }
            for g, per in sorted(enc.items())
        },
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def read_encodings(path: Path) -> dict[str, dict[str, Encoding]]:
    doc = json.loads(path.read_text())
    return {
        g: {k: Encoding(float(v["scale"]), int(v["zero_point"]), int(v["bits"])) for k, v in per.items()}
        for g, per in doc["graphs"].items()
    }


def out_of_range(params: Mapping[str, np.ndarray], enc: Mapping[str, Encoding]) -> Iterator[str]:
    """``tensor [lo, hi] outside [rmin, rmax]`` for every tensor of ``params`` its encoding would clip."""
    for name, value in sorted(params.items()):
        e = enc.get(name)
        if e is None or value.size == 0 or not np.issubdtype(value.dtype, np.floating):
            continue
        lo, hi = float(value.min()), float(value.max())
        slack = SLACK_STEPS * e.scale
        if lo < e.rmin - slack or hi > e.rmax + slack:
            yield f"{name} [{lo:.4g}, {hi:.4g}] outside [{e.rmin:.4g}, {e.rmax:.4g}]"


def refuse_out_of_range(who: str, target: str, problems: list[str]) -> None:
    if problems:
        raise IncompatibleError(
            who,
            f"its LoRA weights fall outside the encodings of quantized target {target}: {'; '.join(problems[:3])}"
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""),
            hint="rebuild the target with --force to calibrate it over every adapter, or use a float target",
        )
