"""One dtype vocabulary inside loramgr, with converters at the edges.

Inside: numpy/ONNX names (``float32``, ``float16``, ``bfloat16``, ``int8``, ...). At the edges three
other spellings exist and stay as users and files know them:

- safetensors headers and the adapter records' ``dtype`` field: ``F32``, ``F16``, ``BF16``, ``I8`` ...
  (:func:`from_safetensors`);
- base precisions on the command line and in records: ``fp32``, ``fp16``, ``int8``, ``int16``
  (:func:`precision_of`, :func:`of_precision`);
- ONNX ``TensorProto`` element types (read in :mod:`loramgr.formats.onnx_graph`).
"""

from __future__ import annotations

import math

_SAFETENSORS = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
}
_PRECISION = {"float32": "fp32", "float16": "fp16", "int8": "int8", "int16": "int16"}

FLOATS = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e8m0fnu"})
#: float dtypes a LoRA adapter may be stored in (fp8 needs dequantizing first)
LORA_FLOATS = frozenset({"float64", "float32", "float16", "bfloat16"})
PRECISIONS = ("fp32", "fp16", "int8", "int16")


def from_safetensors(code: str) -> str:
    """``F32`` -> ``float32``; an unknown code is returned as it is (it is then neither float nor int)."""
    return _SAFETENSORS.get(code, code)


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def precision_of(dtype: str) -> str:
    """The base precision a LoRA input dtype means (``float16`` -> ``fp16``)."""
    return _PRECISION.get(dtype, dtype)


def of_precision(precision: str) -> str:
    """The LoRA input dtype of a precision (``fp16`` -> ``float16``)."""
    return {v: k for k, v in _PRECISION.items()}.get(precision, precision)


def int_bits(name: str) -> int | None:
    """Bit width of an integer precision or dtype (``int8`` -> 8), ``None`` for float ones."""
    return {"int8": 8, "int16": 16}.get(name)


#: the largest finite value of each float dtype a graph holds numbers in (IEEE 754 binary16/32/64;
#: bfloat16 keeps float32's exponent)
FLOAT_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


def fits(value: float, dtype: str) -> bool:
    """``value`` is finite and stays finite once stored as the float ``dtype``: a check made on the
    Python float alone passes 1e39, which a float32 input turns into inf (and the logits into NaN)."""
    try:
        v = float(value)
    except (OverflowError, TypeError, ValueError):  # a 400-digit integer, a non-number
        return False
    return math.isfinite(v) and abs(v) <= FLOAT_MAX[dtype]


def alpha_dtype(precision: str) -> str:
    """The dtype of a base's alpha input: the graph's float type (``fp16`` graphs hold float16; fp32
    graphs and the float graphs under integer LoRA precisions hold float32)."""
    return "float16" if precision == "fp16" else "float32"
