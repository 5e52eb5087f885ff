"""Rows of an ``export-registry`` dump pass the same checks as registered ones before any is imported.

A dump is a user file: an adapter named ``../../evil`` would make ``build`` write outside ``-o``, a
sha256 of ``../../etc/passwd`` would make the store look outside itself. Every column is type-checked
against the model, and names, versions, digests, file names, statuses and numbers against the rules
``register`` / ``base register`` apply; the first problem refuses the whole import (exit 4).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from loramgr.errors import InvalidInputError, LoramgrError
from loramgr.formats.onnx_graph import LORA_INPUT_DTYPES
from loramgr.formats.peft import MAX_RANK, finite_alpha, parse_config
from loramgr.names import check_name, check_version
from loramgr.records import ADAPTER_STATUSES

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
Check = Callable[[Any], str | None]  # a value -> what is wrong with it (None: fine)


def _name(v: Any) -> str | None:
    try:
        check_name(v)
    except LoramgrError as e:
        return e.why
    return None


def _version(v: Any) -> str | None:
    try:
        check_version(v)
    except LoramgrError as e:
        return e.why
    return None


def _hex(v: Any) -> str | None:
    return None if isinstance(v, str) and _HEX64.match(v) else "is not a sha256 hex digest"


def _one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"


def _count(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "is not a non-negative integer"


def _rank(v: Any) -> str | None:
    ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_RANK)
    return None if ok else f"is not a rank from 1 to {MAX_RANK}"


def _alpha(v: Any) -> str | None:
    return None if v is None or finite_alpha(v) else "is not a finite lora_alpha"


def _relative(v: Any) -> str | None:
    if not isinstance(v, str) or not v or v.startswith("/") or "\\" in v or ".." in PurePosixPath(v).parts:
        return "is not a relative path inside its directory"
    return None


def _external(v: Any) -> str | None:
    if not isinstance(v, list):
        return "is not a list"
    for e in v:
        if not isinstance(e, dict):
            return "holds a non-object entry"
        why = _relative(e.get("location")) or _hex(e.get("sha256")) or _count(e.get("size"))
        if why:
            return f"entry {str(e.get('location'))[:60]!r} {why}"
    return None


def _peft_config(v: Any) -> str | None:
    if v is None:
        return None
    try:
        parse_config({k: x for k, x in v.items() if k != "extra"} if isinstance(v, dict) else v, "peft_config")
    except LoramgrError as e:
        return e.why
    return None


def _tags(v: Any) -> str | None:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        return "is not a map of strings"
    bad = [k for k in v if _name(k)]
    return f"key {bad[0][:60]!r} is not a safe name" if bad else None


def _shape(v: Any) -> str | None:
    return None if isinstance(v, list) and all(_count(d) is None for d in v) else "is not a shape"


def _str_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "is not a list of strings"


def _int_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(_count(x) is None for x in v) else "is not a list of ids"


def _absolute(v: Any) -> str | None:
    return None if isinstance(v, str) and v.startswith("/") and "\x00" not in v else "is not an absolute path"


RULES: dict[str, dict[str, Check]] = {
    "adapter": {
        "name": _name,
        "version": _version,
        "sha256": _hex,
        "config_sha256": _hex,
        "size": _count,
        "rank": _rank,
        "alpha": _alpha,
        "status": _one_of(*ADAPTER_STATUSES),
        "tags": _tags,
        "peft_config": _peft_config,
    },
    "adapter_tensor": {"shape": _shape, "offset_begin": _count, "offset_end": _count},
    "base_model": {
        "name": _name,
        "version": _version,
        "precision": _one_of("fp32", "fp16", "int8", "int16"),
        "max_rank": _rank,
        "status": _one_of("active", "retired"),
        "quant_updatable_mode": _one_of("none", "adapter_only", "all"),
    },
    "graph": {
        "name": _name,
        "onnx_sha256": _hex,
        "file_name": _name,
        "size": _count,
        "external_data": _external,
        "kind": _one_of("prefill", "decode", "part", "single"),
    },
    "attachment_point": {
        "in_features": _count,
        "out_features": _count,
        "rank": _rank,
        "dtype": _one_of(*LORA_INPUT_DTYPES),
        "graphs": _str_list,
    },
    "build": {"status": _one_of("running", "done", "failed"), "backend": _one_of("ort", "qairt"), "out_dir": _absolute},
    "artifact": {"sha256": _hex, "size": _count, "path": _absolute, "graphs": _str_list},
    "encoding": {"kind": _one_of("activation", "param"), "owner": _count},
    "plan": {"sha256": _hex, "adapter_ids": _int_list, "status": _one_of("active", "superseded"), "path": _absolute},
}


def _python_type(col: Any) -> type | None:
    try:
        t: type = col.type.python_type
        return t
    except NotImplementedError:
        return None


def _type_problem(v: Any, want: type | None, nullable: bool) -> str | None:
    if v is None:
        return None if nullable else "must not be null"
    if want is None or want in (dict, list):  # JSON columns: their own rules check the content
        return None
    if want is dt.datetime:
        return None if isinstance(v, dt.datetime) else "is not a timestamp"
    if want is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        return None if ok else "is not a finite number"
    if want is bool:
        return None if isinstance(v, bool) else "is not true/false"
    if want is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "is not an integer"
    return None if isinstance(v, want) else f"is not a {want.__name__}"


def check_rows(table: Any, rows: Sequence[Mapping[str, Any]], source: str) -> None:
    """Refuse (exit 4) the first row of ``table`` with a wrongly typed column or a value the registry
    would never hold."""
    cols = {c.name: c for c in table.columns}
    rules = RULES.get(table.name, {})
    for i, r in enumerate(rows):
        for k, v in r.items():
            why = _type_problem(v, _python_type(cols[k]), bool(cols[k].nullable)) or (
                rules[k](v) if k in rules and v is not None else None
            )
            if why:
                raise InvalidInputError(source, f"table {table.name} row {i + 1}: {k} {str(v)[:60]!r} {why}")
        if table.name == "adapter_tensor" and r.get("offset_begin", 0) > r.get("offset_end", 0):
            raise InvalidInputError(source, f"table adapter_tensor row {i + 1}: offsets are reversed")
