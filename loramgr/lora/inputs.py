"""A registered adapter -> a base's canonical LoRA inputs (what a section holds).

Wires :mod:`loramgr.lora.prepare` (pure tensor functions) to records: which attachment points, which
tensors of the stored file, which scaling from the stored PEFT config, and for integer precisions the
adapter's weight encodings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loramgr import dtypes
from loramgr.errors import IncompatibleError
from loramgr.formats.lora_v3 import Branch
from loramgr.formats.quant import quantize_symmetric, symmetric_per_channel
from loramgr.lora.loader import AdapterFile
from loramgr.lora.prepare import default_adapter, prepare
from loramgr.lora.rules import check_adapter
from loramgr.lora.usecase import concat_inputs, module_ranks, single_indices
from loramgr.records import Adapter, AttachmentPoint, Base, EncodingSet


def targets_of(base: Base, graph: str | None = None) -> list[AttachmentPoint]:
    """The base's attachment points (optionally only those of one graph), in registry order."""
    return base.points_of(graph)


def prepared_inputs(adapter: Adapter, base: Base) -> dict[str, np.ndarray]:
    """Canonical LoRA inputs of ``adapter`` for every attachment point of ``base``."""
    return prepared_with_ranks(adapter, base)[0]


def prepared_with_ranks(adapter: Adapter, base: Base) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Canonical LoRA inputs of ``adapter`` for every attachment point of ``base``.

    Re-checks compatibility (cheap, header-level) so that no caller can prepare an adapter that
    validation would refuse.
    """
    f, c = _checked(adapter, base)
    tensors = prepare(targets_of(base), c.pairs, f.load, precision=base.precision, scaling=adapter.scaling).tensors
    ranks = module_ranks(adapter, c)
    if base.max_adapters:  # alone on a base with alpha slots: its columns -> slot 0, padding -> the zero slot
        tensors |= single_indices(base, ranks)
    return tensors, ranks


def _checked(adapter: Adapter, base: Base) -> tuple[AdapterFile, Any]:
    """The adapter's file and its compatibility check, refusing what validation would refuse."""
    f = AdapterFile(adapter)
    c = check_adapter(adapter, base, f.load)
    if not c.ok:
        raise IncompatibleError(
            adapter.ref,
            f"incompatible with base {base.ref} ({', '.join(sorted({p.code for p in c.problems}))})",
            details=[p.to_json() for p in c.problems],
        )
    return f, c


def adapter_ranks(adapter: Adapter, base: Base) -> dict[str, int]:
    """Attachment point -> the adapter's rank there (refusing what validation would refuse)."""
    return module_ranks(adapter, _checked(adapter, base)[1])


def real_rank_branches(members: list[Adapter], base: Base) -> dict[str, Any]:
    """Per attachment point, the use case's branch at its real rank (QNN LoRA v3 creator models):
    the members' PEFT A and B (unscaled) rank-concatenated in slot order, and each column's scaling.
    Returns module path -> :class:`loramgr.formats.lora_v3.Branch`."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    for adapter in members:
        f, c = _checked(adapter, base)
        for module, (ka, kb) in c.pairs.items():
            a, b = f.load(ka).astype(np.float32), f.load(kb).astype(np.float32)  # [r, in], [out, r]
            parts.setdefault(module, []).append((a.T, b.T, adapter.scaling.factor(module, a.shape[0])))
    return {
        m: Branch(
            np.concatenate([a for a, _, _ in ps], axis=1),
            np.concatenate([b for _, b, _ in ps], axis=0),
            np.concatenate([np.full(a.shape[1], s, np.float32) for a, _, s in ps]),
        )
        for m, ps in parts.items()
    }


def default_inputs(base: Base) -> dict[str, np.ndarray]:
    """The all-zero default adapter (with alpha slots: every column on the zero slot)."""
    return default_adapter(targets_of(base), base.precision) | single_indices(base, {})


def weight_encodings(
    adapter: Adapter, base: Base, bits: int, prepared: dict[str, np.ndarray] | None = None
) -> EncodingSet:
    """Symmetric per-output-channel encodings of an adapter's prepared weights (what ``build
    --precision int8|int16`` uses when calibration has not stored any)."""
    x = prepared if prepared is not None else prepared_inputs(adapter, base)
    return EncodingSet({}, {n: symmetric_per_channel(x[n], bits, axis=1) for n in sorted(base.lora_inputs)})


def section_inputs(
    adapter: Adapter | None,
    base: Base,
    encodings: EncodingSet | None = None,
    prepared: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """What a section holds. Float precisions: the prepared tensors. int8/int16: each LoRA weight
    quantized with the adapter's param encodings; for graphs whose LoRA inputs are integer (``base
    export --quantized-lora``) the integer codes plus ``<input>_scale``, else (float graphs) the
    dequantized values, which reproduces the quantization error exactly."""
    x = (
        prepared
        if prepared is not None
        else (default_inputs(base) if adapter is None else prepared_inputs(adapter, base))
    )
    bits = dtypes.int_bits(base.precision)
    if bits is None:
        return x
    params = encodings.param if encodings is not None else {}
    out: dict[str, np.ndarray] = {}
    for ap in base.attachment_points:
        for n in ap.tensors:
            w = x[n].astype(np.float32)
            encs: Any = params.get(n) or [{"bitwidth": bits, "scale": 1.0}] * w.shape[1]
            q, scales = quantize_symmetric(w, encs, axis=1)
            scales = np.broadcast_to(scales, (w.shape[1],)).astype(np.float32)
            input_bits = dtypes.int_bits(ap.dtype)
            if input_bits is not None:  # integer graph inputs: codes + per-channel scales
                out[n] = q.astype(np.int8 if input_bits == 8 else np.int16)
                out[n + "_scale"] = scales
            else:  # float graph inputs: the dequantized values, in the input's own dtype
                out[n] = (q.astype(np.float32) * scales[None, :]).astype(np.dtype(ap.dtype))
        if ap.tensor_indices:
            out[ap.tensor_indices] = x[ap.tensor_indices]
    return out


def use_case_inputs(members: list[Adapter], base: Base, encodings: EncodingSet | None = None) -> dict[str, np.ndarray]:
    """A use case's section: its adapters' prepared inputs rank-concatenated in slot order, with the
    slot maps; integer precisions quantize the concatenation (per output channel, with the use case's
    calibrated weight encodings when there are any)."""
    both = [prepared_with_ranks(a, base) for a in members]
    x = concat_inputs(base, [p for p, _ in both], [r for _, r in both])
    bits = dtypes.int_bits(base.precision)
    if bits is None:
        return x
    enc = (
        encodings
        if encodings and encodings.param
        else EncodingSet({}, {n: symmetric_per_channel(x[n], bits, axis=1) for n in sorted(base.lora_inputs)})
    )
    return section_inputs(None, base, enc, prepared=x)


def group_encodings(group_members: list[list[Adapter]], base: Base) -> EncodingSet:
    """A group's shared weight encodings: per LoRA input and output channel, one symmetric scale over
    every member use case's (rank-concatenated) weights, so that one quantization section serves
    them all (QNN LoRA v3 grouped LoRA)."""
    bits = dtypes.int_bits(base.precision)
    if bits is None:
        return EncodingSet()
    xs = []
    for members in group_members:
        both = [prepared_with_ranks(a, base) for a in members]
        xs.append(concat_inputs(base, [p for p, _ in both], [r for _, r in both]))
    return EncodingSet(
        {},
        {
            n: symmetric_per_channel(np.concatenate([x[n] for x in xs], axis=0), bits, axis=1)
            for n in sorted(base.lora_inputs)
        },
    )


def grouped_inputs(
    members: list[Adapter], base: Base, encodings: EncodingSet
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(weights section, quantization section) of a use case in a group, quantized with the group's
    ``encodings`` (:func:`group_encodings`): the integer codes (and slot maps), and the scales alone
    (``<input>_scale``)."""
    x = use_case_inputs(members, base, encodings)
    return {k: v for k, v in x.items() if not k.endswith("_scale")}, {
        k: v for k, v in x.items() if k.endswith("_scale")
    }
