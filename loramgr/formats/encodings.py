"""AIMET quantization encodings: read (0.6.1 dicts, 1.0.0 lists, 2.0.0, the LoRA flow's flat map), check, write.

Convention (AIMET/QNN): ``x = scale * (q + offset)``, ``offset = round(min / scale)`` (<= 0), unsigned
codes ``q in [0, 2^bw - 1]`` for asymmetric activations; symmetric weights use signed codes with
``offset = -2^(bw-1)`` in AIMET's file and zero-point 0 at run time.

Normalised form, used everywhere in loramgr: ``{"version": "0.6.1", "activation_encodings":
{tensor: [entry]}, "param_encodings": {tensor: [entry per channel]}}`` with entries
``{bitwidth, dtype, is_symmetric, min, max, scale, offset}`` (is_symmetric as the strings AIMET
writes, "True"/"False").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loramgr import dtypes
from loramgr.errors import InvalidInputError
from loramgr.infra.files import read_text

MAX_BYTES = 256 * 1024 * 1024
SECTIONS = ("activation_encodings", "param_encodings")
_NUM = (int, float)


def _bool_str(v: Any, where: str, source: str) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return "True" if v.lower() == "true" else "False"
    raise InvalidInputError(source, f"{where}.is_symmetric: expected true/false, got {v!r}")


def _entry(e: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise InvalidInputError(source, f"{where}: expected an object")
    bw = e.get("bitwidth")
    if isinstance(bw, bool) or not isinstance(bw, int) or not 1 <= bw <= 32:
        raise InvalidInputError(source, f"{where}.bitwidth: expected an integer 1..32, got {bw!r}")
    dtype = e.get("dtype", "int")
    if dtype not in ("int", "float"):
        raise InvalidInputError(source, f"{where}.dtype: expected 'int' or 'float', got {dtype!r}")
    out: dict[str, Any] = {
        "bitwidth": bw,
        "dtype": dtype,
        "is_symmetric": _bool_str(e.get("is_symmetric", False), where, source),
    }
    if dtype == "float":
        return out
    for k in ("min", "max", "scale", "offset"):
        v = e.get(k)
        # the runtimes hold these as float32 (a 400-digit integer is refused here, not an OverflowError)
        if isinstance(v, bool) or not isinstance(v, _NUM) or not dtypes.fits(v, "float32"):
            raise InvalidInputError(source, f"{where}.{k}: expected a finite float32 number, got {str(v)[:40]}")
        out[k] = float(v) if k != "offset" else int(round(v))
    if not out["scale"] > 0 or out["min"] > out["max"]:
        raise InvalidInputError(source, f"{where}: needs scale > 0 and min <= max")
    if abs(out["offset"]) > 2**bw:  # x = scale * (q + offset), q a bw-bit code: a zero point inside the range
        raise InvalidInputError(source, f"{where}.offset: {out['offset']} is outside a {bw}-bit code range")
    return out


def checked_entries(entries: Any, where: str, source: str) -> list[dict[str, Any]]:
    """A tensor's normalised entries, each checked as a file's would be (``InvalidInputError``)."""
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(source, f"{where}: expected a non-empty list of encodings")
    return [_entry(e, f"{where}[{i}]", source) for i, e in enumerate(entries)]


def _v1_entries(e: dict[str, Any], where: str, source: str) -> list[dict[str, Any]]:
    """AIMET 1.0.0 entry ``{name, enc_type, bw, dtype, is_sym, scale: [...], offset: [...]}``."""
    bw = e.get("bw")
    scales, offsets = e.get("scale"), e.get("offset")
    if not isinstance(scales, list) or not isinstance(offsets, list) or len(scales) != len(offsets) or not scales:
        raise InvalidInputError(source, f"{where}: expected equal, non-empty scale and offset lists")
    out = []
    for i, (s, o) in enumerate(zip(scales, offsets, strict=True)):
        if isinstance(s, bool) or not isinstance(s, _NUM) or isinstance(o, bool) or not isinstance(o, _NUM):
            raise InvalidInputError(source, f"{where}.scale/offset[{i}]: expected numbers")
        if not (dtypes.fits(s, "float32") and dtypes.fits(o, "float32")):
            raise InvalidInputError(source, f"{where}.scale/offset[{i}]: expected finite float32 numbers")
        levels = 2**bw - 1 if isinstance(bw, int) and not isinstance(bw, bool) and 1 <= bw <= 32 else 0
        out.append(
            _entry(
                {
                    "bitwidth": bw,
                    "dtype": str(e.get("dtype", "int")).lower(),
                    "is_symmetric": e.get("is_sym", False),
                    "scale": s,
                    "offset": o,
                    "min": s * o,
                    "max": s * (o + levels),
                },
                f"{where}[{i}]",
                source,
            )
        )
    return out


_V2_TYPES = {f"{s}int{b}": (b, s == "") for b in (4, 8, 16, 32) for s in ("", "u")}


def _v2_entries(e: dict[str, Any], where: str, source: str) -> list[dict[str, Any]]:
    """AIMET 2.0.0 entry ``{name, output_dtype, y_scale, y_zero_point?, axis?}`` (ONNX QDQ style:
    ``x = y_scale * (q - y_zero_point)``) in the normalised form."""
    dt = e.get("output_dtype")
    if isinstance(dt, str) and dt.startswith("float"):
        bits = int(dt[5:] or 32) if dt[5:].isdigit() else 0
        return [_entry({"bitwidth": bits, "dtype": "float"}, where, source)]
    if dt not in _V2_TYPES:
        raise InvalidInputError(source, f"{where}.output_dtype: expected one of {', '.join(_V2_TYPES)}, got {dt!r}")
    if "block_size" in e or "per_block_int_scale" in e:
        raise InvalidInputError(source, f"{where}: block-wise (LPBQ) encodings are not supported; export per channel")
    bw, signed = _V2_TYPES[dt]
    scales = e.get("y_scale")
    scales = scales if isinstance(scales, list) else [scales]
    zps = e.get("y_zero_point", 0)
    zps = zps if isinstance(zps, list) else [zps] * len(scales)
    if not scales or len(zps) != len(scales):
        raise InvalidInputError(source, f"{where}: y_scale and y_zero_point differ in length")
    out = []
    for i, (sc, z) in enumerate(zip(scales, zps, strict=True)):
        if isinstance(z, bool) or not isinstance(z, int) or isinstance(sc, bool) or not isinstance(sc, _NUM):
            raise InvalidInputError(
                source, f"{where}.y_scale/y_zero_point[{i}]: expected numbers (an integer zero point)"
            )
        offset = -z - (2 ** (bw - 1) if signed else 0)  # x = scale * (q_unsigned + offset)
        levels = 2**bw - 1
        entry = {"bitwidth": bw, "dtype": "int", "is_symmetric": signed and z == 0, "scale": sc, "offset": offset}
        if not dtypes.fits(sc, "float32"):
            raise InvalidInputError(source, f"{where}.y_scale[{i}]: expected a finite float32 number")
        out.append(_entry(entry | {"min": sc * offset, "max": sc * (offset + levels)}, f"{where}[{i}]", source))
    return out


def _loose_entries(v: Any, where: str, source: str) -> list[dict[str, Any]]:
    """One tensor's encodings in any per-entry layout: 1.0.0 (``bw``, ``scale`` list), 2.0.0
    (``output_dtype``), 0.6.1 (``bitwidth``) or a list of 0.6.1 entries."""
    if isinstance(v, dict) and "output_dtype" in v:
        return _v2_entries(v, where, source)
    if isinstance(v, dict) and "bw" in v:
        return _v1_entries(v, where, source)
    items = v if isinstance(v, list) else [v]
    if not items:
        raise InvalidInputError(source, f"{where}: empty list")
    return [_entry(e, f"{where}[{i}]", source) for i, e in enumerate(items)]


def is_scale_tensor(name: str) -> bool:
    """AIMET's LoRA flow keeps PEFT's ``alpha / r`` in a tensor of its own, ``<module>.lora_scale``
    (``.lora_scale.<adapter>`` with several adapters): its encoding is disabled; it says the file's
    lora_B encodings are of the unscaled B."""
    return ".lora_scale" in name and not name.endswith((".lora_A.weight", ".lora_B.weight"))


def _guess_param(name: str) -> bool:
    return ".lora_A" in name or ".lora_B" in name or name.endswith((".weight", ".bias"))


def parse(doc: Any, source: str, is_param: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Validate a decoded encodings file; every error names the offending key.

    Takes AIMET's versioned layouts (0.6.1 dicts, 1.0.0 lists, 2.0.0's one ``encodings`` list) and
    the LoRA flow's flat per-adapter map (``{tensor: entry}``, no sections). Where the file does not
    say whether a tensor is a parameter (2.0.0, flat), ``is_param`` decides (default: LoRA and
    ``.weight``/``.bias`` names). ``lora_scales`` lists AIMET's ``lora_scale`` tensors found."""
    if not isinstance(doc, dict):
        raise InvalidInputError(source, "encodings file is not a JSON object")
    param = is_param or _guess_param
    if not any(k in doc for k in SECTIONS):
        if isinstance(doc.get("encodings"), list):  # 2.0.0
            named = {}
            for i, e in enumerate(doc["encodings"]):
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise InvalidInputError(source, f"encodings[{i}]: expected an object with a name")
                named[e["name"]] = e
        else:  # the LoRA flow's flat map: every key a tensor
            named = {k: v for k, v in doc.items() if k not in ("version", "quantizer_args", "producer")}
            if not named or not all(isinstance(v, dict | list) for v in named.values()):
                raise InvalidInputError(
                    source, "has neither activation_encodings nor param_encodings, nor a {tensor: encoding} map"
                )
        out: dict[str, Any] = {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {}}
        scales = []
        for name, v in named.items():
            if is_scale_tensor(name):
                scales.append(name)
                continue
            sec = "param_encodings" if param(name) else "activation_encodings"
            out[sec][name] = _loose_entries(v, f"{name}", source)
        out["lora_scales"] = scales
        return out
    out = {"version": "0.6.1"}
    for sec in SECTIONS:
        val = doc.get(sec, {})
        table: dict[str, list[dict[str, Any]]] = {}
        if isinstance(val, list):  # AIMET 1.0.0
            for i, e in enumerate(val):
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise InvalidInputError(source, f"{sec}[{i}]: expected an object with a name")
                table[e["name"]] = _v1_entries(e, f"{sec}.{e['name']}", source)
        elif isinstance(val, dict):
            for name, v in val.items():
                items = v if isinstance(v, list) else [v]
                if not items:
                    raise InvalidInputError(source, f"{sec}.{name}: empty list")
                table[name] = [_entry(e, f"{sec}.{name}[{i}]", source) for i, e in enumerate(items)]
        else:
            raise InvalidInputError(source, f"{sec}: expected an object or a list")
        out[sec] = table
    return out


def load(path: str | Path, is_param: Callable[[str], bool] | None = None) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(str(p), "no such file")
    try:
        doc = json.loads(read_text(p, MAX_BYTES, "encodings file"))
    except (ValueError, RecursionError) as e:
        raise InvalidInputError(str(p), f"not valid JSON ({type(e).__name__})") from None
    return parse(doc, str(p), is_param)


def dumps(enc: dict[str, Any]) -> str:
    return (
        json.dumps(
            {"version": enc.get("version", "0.6.1"), **{s: enc.get(s, {}) for s in SECTIONS}}, indent=2, sort_keys=True
        )
        + "\n"
    )
