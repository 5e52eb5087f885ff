"""Header-first safetensors reader.

Registering a multi-GB adapter must not load it, so this reads only the 8-byte length and the JSON
header, and checks everything the header claims against the file's real size: byte ranges in bounds,
contiguous, not overlapping, matching dtype x shape. Tensor bytes are read later, one tensor at a
time, only by code that needs them (:func:`read_tensor`). Never unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError
from loramgr.infra.files import regular_file

#: bytes per element of every dtype the safetensors spec defines.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F16", "BF16", "F32", "F64"}
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's own limit
MAX_JSON_DEPTH = 64

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
_LFS_MAGIC = b"version https://git-lfs"


@dataclass(frozen=True)
class TensorInfo:
    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int  # absolute file offset one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0


def _bad(path: Path | str, why: str, hint: str | None = None) -> InvalidInputError:
    return InvalidInputError(str(path), why, hint=hint)


def sniff_foreign(path: Path, head: bytes) -> None:
    """Recognise files that are not safetensors and say what they are instead."""
    if head.startswith(_LFS_MAGIC):
        raise _bad(
            path, "is a Git LFS pointer file, not the adapter weights", "run `git lfs pull` in its repository first"
        )
    # a safetensors header length can start with 0x80 (e.g. 640 bytes = 80 02 ...); its JSON always
    # starts with "{" at offset 8, a pickle's byte 8 never is that in practice
    pickle_like = head[:1] == b"\x80" and head[8:9] != b"{"
    if path.suffix.lower() in _PICKLE_SUFFIXES or pickle_like or head[:4] == b"PK\x03\x04":
        raise _bad(
            path,
            "looks like a pickle/PyTorch checkpoint, which loramgr never loads (it can run code)",
            "convert it to safetensors, e.g. safetensors.torch.save_file(torch.load(f, weights_only=True), "
            "'adapter_model.safetensors') in a trusted environment",
        )


def _depth_ok(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and fully check the header of a safetensors file without touching tensor bytes."""
    p = Path(path)
    regular_file(p, "safetensors file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            sniff_foreign(p, head + f.read(32))
            if len(head) < 8:
                raise _bad(p, f"truncated: {size} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise _bad(p, f"truncated or corrupt: header length {n} is larger than the file ({size} bytes)")
            if n > MAX_HEADER_BYTES:
                raise _bad(p, f"header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte limit")
            f.seek(8)
            raw = f.read(n)
    except OSError as e:
        raise _bad(p, f"cannot read: {e.strerror or e}") from None
    if len(raw) != n:
        raise _bad(p, "truncated while reading the header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(p, f"header is not UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _bad(p, "header JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise _bad(p, f"header is not JSON ({e.msg} at char {e.pos})") from None
    except ValueError as e:  # e.g. an integer literal too long to convert
        raise _bad(p, f"header is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(p, "header JSON is not an object")
    if not _depth_ok(obj):
        raise _bad(p, "header JSON is nested too deeply")
    data_start = 8 + n
    data_len = size - data_start
    meta = obj.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _bad(p, "__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for key, ent in obj.items():
        if not key or any(ord(c) < 32 for c in key):
            raise _bad(p, f"tensor key {key!r} is empty or has control characters")
        if not isinstance(ent, dict) or set(ent) != {"dtype", "shape", "data_offsets"}:
            raise _bad(p, f"tensor {key!r}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offs = ent["dtype"], ent["shape"], ent["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise _bad(p, f"tensor {key!r}: unknown dtype {dtype!r}")
        if not _int_list(shape) or len(shape) > 16:
            raise _bad(p, f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers")
        if not _int_list(offs) or len(offs) != 2:
            raise _bad(p, f"tensor {key!r}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        if begin > end:
            raise _bad(p, f"tensor {key!r}: data_offsets begin {begin} > end {end}")
        if end > data_len:
            raise _bad(
                p, f"tensor {key!r}: byte range [{begin}, {end}) is out of bounds (data section is {data_len} bytes)"
            )
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != want:
            raise _bad(p, f"tensor {key!r}: {end - begin} bytes do not match {dtype} x {list(shape)} ({want} bytes)")
        tensors[key] = TensorInfo(key, dtype, tuple(shape), data_start + begin, data_start + end)
    pos = data_start
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin < pos:
            raise _bad(p, f"tensor {t.key!r}: byte range overlaps another tensor")
        if t.begin > pos:
            raise _bad(p, f"tensor {t.key!r}: gap of {t.begin - pos} bytes before it (not a valid safetensors layout)")
        pos = t.end
    if pos != size:
        raise _bad(p, f"{size - pos} trailing bytes after the last tensor (file corrupt or not safetensors)")
    return Header(p, tensors, dict(meta), data_start, size)


def numpy_dtype(dtype: str) -> Any:
    """numpy dtype for a safetensors dtype; bf16/fp8 come from ml_dtypes."""
    import numpy as np

    simple = {
        "BOOL": np.bool_,
        "U8": np.uint8,
        "I8": np.int8,
        "I16": np.int16,
        "U16": np.uint16,
        "F16": np.float16,
        "I32": np.int32,
        "U32": np.uint32,
        "F32": np.float32,
        "I64": np.int64,
        "U64": np.uint64,
        "F64": np.float64,
    }
    if dtype in simple:
        return np.dtype(simple[dtype])
    import ml_dtypes

    return np.dtype(
        {
            "BF16": ml_dtypes.bfloat16,
            "F8_E5M2": ml_dtypes.float8_e5m2,
            "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "F8_E8M0": ml_dtypes.float8_e8m0fnu,
        }[dtype]
    )


def read_tensor(path: str | os.PathLike[str], info: TensorInfo) -> Any:
    """Read one tensor's bytes (little-endian, as the spec mandates) into a numpy array."""
    import numpy as np

    with open(path, "rb") as f:
        f.seek(info.begin)
        buf = f.read(info.nbytes)
    if len(buf) != info.nbytes:
        raise _bad(str(path), f"tensor {info.key!r}: file shorter than its header says")
    return np.frombuffer(buf, dtype=numpy_dtype(info.dtype).newbyteorder("<")).reshape(info.shape).copy()


class FiniteScan:
    """Checks, chunk by chunk as the file streams past (the store's one read while hashing), that every
    float tensor holds only finite values; the first NaN or Inf raises naming the tensor and element.

    Chunks must arrive in file order. Tensors are contiguous byte ranges sorted by offset (the header
    check guarantees it); an element cut by a chunk boundary is carried over to the next chunk."""

    def __init__(self, header: Header) -> None:
        self.path = header.path
        self.ranges = sorted(
            ((t.begin, t.end, t) for t in header.tensors.values() if t.dtype in FLOAT_DTYPES and t.end > t.begin),
            key=lambda r: r[0],
        )
        self.pos = 0
        self.idx = 0
        self.carry = b""

    def __call__(self, chunk: memoryview) -> None:
        import numpy as np

        start, end = self.pos, self.pos + len(chunk)
        self.pos = end
        while self.idx < len(self.ranges):
            b, e, t = self.ranges[self.idx]
            if b >= end:
                return
            lo, hi = max(b, start), min(e, end)
            if hi > lo:
                dt = numpy_dtype(t.dtype).newbyteorder("<")
                buf = (
                    self.carry + bytes(chunk[lo - start : hi - start]) if self.carry else chunk[lo - start : hi - start]
                )
                usable = len(buf) - len(buf) % dt.itemsize
                values = np.frombuffer(buf[:usable], dtype=dt)
                ok = np.isfinite(values)
                if not ok.all():
                    first = (lo - b - len(self.carry)) // dt.itemsize + int(np.argmin(ok))
                    raise _bad(
                        self.path,
                        f"tensor {t.key!r} holds a non-finite value (NaN or Inf) at element {first}",
                        hint="an adapter with NaN/Inf weights computes garbage; re-export it",
                    )
                self.carry = bytes(buf[usable:])
            if e > end:
                return
            self.idx += 1
            self.carry = b""
