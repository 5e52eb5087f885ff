"""``loramgr encodings import``: AIMET's encodings for an adapter, made loramgr's and checked.

AIMET writes several layouts (0.6.1, 1.0.0, 2.0.0, and its LoRA flow's flat per-adapter map, read by
:mod:`loramgr.formats.encodings`) under its own or PEFT's tensor names (mapped by
:func:`loramgr.registry.encodings.canonical_name`). Two things make a file that parses still wrong:

- **the ``alpha / r`` fold.** loramgr's prepared ``lora_B`` carries PEFT's scaling (``alpha / r``,
  per module with patterns, ``alpha / sqrt(r)`` with rsLoRA); AIMET's LoRA flow keeps it in a tensor
  of its own (``<module>.lora_scale``), so its ``lora_B`` encodings are of the unscaled B. Imported
  as they are, the codes clip (an alpha-32, rank-8 adapter: B is 4x past the range).
  ``--fold-scale auto`` folds the factor into a lora_B encoding when the file holds ``lora_scale``
  tensors, or when the folded encoding fits the prepared weights tightly (its range within 2% of
  their largest magnitude, per channel) and the unfolded one clips; ``yes`` always, ``no`` never, a
  number folds that factor.
- **clipping.** Every weight encoding is held against the prepared weights: one that leaves more than
  ``max_clip`` of a tensor's values outside its range (beyond half a step) is refused with exit 5,
  naming the tensor, the range, the weights' reach and the likely cause, unless ``allow_clip``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr.errors import IncompatibleError, UsageError
from loramgr.lora.inputs import prepared_with_ranks
from loramgr.records import Adapter, Base, EncodingSet, JsonRecord

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

DEFAULT_MAX_CLIP = 0.01
#: how much wider than the weights' reach a folded encoding may be and still count as "theirs"
TIGHT = 0.02


@dataclass(frozen=True)
class Fit:
    """How an encoding holds a tensor: the share of values outside its range, and how far the
    weights reach against the range's edge (1.0: the edge exactly)."""

    clipped: float
    reach: float  # max |w| / max |representable|, over channels


def _ranges(entries: Sequence[Mapping[str, Any]], channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(min, max, scale) per output channel (one entry: the same for every channel)."""
    es = list(entries) if len(entries) == channels else [entries[0]] * channels
    return (
        np.array([float(e["min"]) for e in es]),
        np.array([float(e["max"]) for e in es]),
        np.array([float(e["scale"]) for e in es]),
    )


def fit(w: np.ndarray, entries: Sequence[Mapping[str, Any]]) -> Fit:
    """How ``entries`` (per output channel, axis 1, or one) hold the prepared weights ``w``."""
    x = np.asarray(w, np.float64)
    lo, hi, scale = _ranges(entries, x.shape[1])
    outside = (x < (lo - scale / 2)[None, :]) | (x > (hi + scale / 2)[None, :])
    edge = np.maximum(np.abs(lo), np.abs(hi))
    mag = np.abs(x).max(axis=0)
    reach = float(np.max(np.where(mag > 0, mag / np.maximum(edge, 1e-30), 0.0))) if x.size else 0.0
    real = int(np.count_nonzero(x))  # rank padding (zeros) is never clipped: the share is of the real values
    return Fit(float(outside.sum()) / real if real else 0.0, reach)


def scaled(entries: Sequence[Mapping[str, Any]], factor: float) -> list[dict[str, Any]]:
    """Encodings of ``factor`` times the tensor they were computed for (codes and offsets unchanged)."""
    out = []
    for e in entries:
        f = dict(e)
        if "scale" in f:
            f |= {"scale": f["scale"] * factor, "min": f["min"] * factor, "max": f["max"] * factor}
        out.append(f)
    return out


def _tight(w: np.ndarray, entries: Sequence[Mapping[str, Any]]) -> bool:
    """Every used channel's range (or the tensor's, for one encoding) ends within ``TIGHT`` above its
    largest magnitude: a min-max encoding of exactly these weights."""
    x = np.abs(np.asarray(w, np.float64))
    lo, hi, scale = _ranges(entries, x.shape[1])
    mag = x.max(axis=0) if len(entries) == x.shape[1] else np.full(x.shape[1], x.max() if x.size else 0.0)
    edge = np.maximum(np.abs(lo), np.abs(hi))
    used = mag > 0
    return bool(used.any()) and bool(
        np.all((edge[used] >= mag[used] - scale[used]) & (edge[used] <= mag[used] * (1 + TIGHT) + scale[used]))
    )


def parse_fold(text: str) -> str | float:
    """``--fold-scale``: auto, yes, no, or a positive factor."""
    if text in ("auto", "yes", "no"):
        return text
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise UsageError(f"--fold-scale {text}", "expected auto, yes, no or a positive factor")
    return v


@dataclass(frozen=True)
class EncodingsImported(JsonRecord):
    """What ``encodings import --json`` prints."""

    adapter: str
    base: str
    tensors: int
    file: str
    folded: list[str] = field(default_factory=list)  # lora_B tensors whose encodings got alpha/r folded in
    worst_clip: float = 0.0  # the largest share of a weight tensor outside its encoding


def fold_and_check(
    enc: EncodingSet,
    adapter: Adapter,
    base: Base,
    *,
    source: str,
    fold: str | float = "auto",
    scale_modules: frozenset[str] = frozenset(),
    max_clip: float = DEFAULT_MAX_CLIP,
    allow_clip: bool = False,
) -> tuple[EncodingSet, list[str], float]:
    """The encodings with PEFT's scaling folded into the lora_B ones that need it, the names folded
    and the worst clipped share; refuses (exit 5) an encoding that clips more than ``max_clip``."""
    points = {ap.tensor_b: ap for ap in base.attachment_points}
    lora = {n for n in enc.param if n in base.lora_inputs}
    if not lora:
        return enc, [], 0.0
    prepared, ranks = prepared_with_ranks(adapter, base)  # one compatibility check for both
    params = dict(enc.param)
    folded: list[str] = []
    for name in sorted(lora & set(points)):
        module = points[name].module_path
        if module not in ranks:
            continue
        factor = float(fold) if isinstance(fold, float) else adapter.scaling.factor(module, ranks[module])
        if factor == 1.0 or fold == "no":
            continue
        w, entries = prepared[name], params[name]
        candidate = scaled(entries, factor)
        marked = any(module == m or module.endswith("." + m) or m.endswith("." + module) for m in scale_modules)
        if (
            fold == "yes"
            or isinstance(fold, float)
            or marked
            or (fit(w, entries).clipped > max_clip and _tight(w, candidate))
        ):
            params[name] = candidate
            folded.append(name)
    worst = 0.0
    for name in sorted(lora):
        f = fit(prepared[name], params[name])
        worst = max(worst, f.clipped)
        if f.clipped > max_clip and not allow_clip:
            raise IncompatibleError(
                f"{source}: {name}",
                f"its encoding clips {100 * f.clipped:.1f}% of {adapter.ref}'s prepared weights (they reach "
                f"{f.reach:.2f}x the range's edge); {_cause(name, f, adapter, points, ranks, name in folded)}",
                hint=f"--allow-clip keeps it; --max-clip sets the refused share (now {max_clip:g})",
            )
    return EncodingSet(enc.activation, params, enc.sources, enc.version), folded, worst


def _cause(
    name: str, f: Fit, adapter: Adapter, points: Mapping[str, Any], ranks: Mapping[str, int], folded: bool
) -> str:
    ap = points.get(name)
    if ap is not None and ap.module_path in ranks and not folded:
        factor = adapter.scaling.factor(ap.module_path, ranks[ap.module_path])
        if factor != 1.0 and abs(f.reach / factor - 1) < 0.05:
            return (
                f"likely computed on lora_B without the adapter's alpha/r = {factor:g} (AIMET's LoRA flow keeps "
                "it in a lora_scale tensor): import with --fold-scale yes"
            )
    return (
        f"likely computed for other weights (another adapter, rank or scaling) or with a clipping scheme "
        f"(tf_enhanced, percentile): its range is {f.reach:.2f}x too small"
    )


def import_encodings(
    reg: Registry,
    ref: str,
    path: str | Path,
    base_ref: str | None = None,
    *,
    fold: str | float = "auto",
    max_clip: float = DEFAULT_MAX_CLIP,
    allow_clip: bool = False,
) -> EncodingsImported:
    """Attach an AIMET file to an adapter; its tensors replace what calibration computed. Names are
    mapped and checked (exit 4), weight encodings folded and held against the prepared weights
    (exit 5), all before anything is written."""
    if not (0.0 <= max_clip <= 1.0):
        raise UsageError(f"--max-clip {max_clip}", "must be a share from 0 to 1")
    if ref == "default":  # the base's own encodings (activations, its weights): no adapter to fold for
        if not base_ref:
            raise UsageError("encodings import default", "needs --base (the base whose own encodings these are)")
        base = reg.base(base_ref)
        read = reg.encodings.read_aimet(path, base)
        n = reg.encodings.save(base.id, None, read.encodings, "import")
        return EncodingsImported("default", base.ref, n, str(path))
    ad = reg.adapter(ref)
    base = reg.encodings.base_for(ad, base_ref)
    read = reg.encodings.read_aimet(path, base)
    enc, folded, worst = fold_and_check(
        read.encodings,
        ad,
        base,
        source=str(path),
        fold=fold,
        scale_modules=read.scale_modules,
        max_clip=max_clip,
        allow_clip=allow_clip,
    )
    n = reg.encodings.save(base.id, ad.id, enc, "import")
    return EncodingsImported(ad.ref, base.ref, n, str(path), folded, worst)
