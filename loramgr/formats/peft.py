"""PEFT ``adapter_config.json`` as a small validated dataclass (parsed once, like PEFT's LoraConfig).

Only the fields loramgr needs are kept; unknown fields are preserved in ``extra`` so that nothing a
user wrote is lost from the registry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError
from loramgr.infra.files import read_text

MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: the largest LoRA rank loramgr accepts anywhere (configs, tensors, base graphs); real adapters use <= 1024
MAX_RANK = 65536
#: the largest |lora_alpha| (or alpha_pattern value) accepted; real adapters use <= a few thousand
MAX_ALPHA = 1e6


@dataclass(frozen=True)
class LoraConfig:
    """A parsed ``adapter_config.json`` (the fields loramgr reads; the rest in ``extra``), carried by
    the ``Adapter`` record; :meth:`scaling` gives the terms of PEFT's LoRA scaling."""

    r: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    modules_to_save: list[str] | None = None
    bias: str = "none"
    base_model_name_or_path: str | None = None
    peft_type: str | None = None
    task_type: str | None = None
    layers_to_transform: list[int] | int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LoraConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def scaling(self, lora_alpha: float) -> Scaling:
        """The scaling terms, with the adapter's registered ``lora_alpha`` (``register --lora-alpha``
        may set one the config lacks)."""
        return Scaling(lora_alpha, self.r, self.use_rslora, dict(self.rank_pattern), dict(self.alpha_pattern))


def pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the FIRST key, in the config's order, whose
    regex ``(.*\\.)?(key)$`` matches the module path; an exact key has no precedence over an earlier
    one that also matches (peft/utils/other.py ``get_pattern_key``, peft 0.21)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


@dataclass(frozen=True)
class Scaling:
    """What PEFT multiplies one module's LoRA branch by: ``alpha / r`` (``alpha / sqrt(r)`` with
    rsLoRA), ``r`` and ``alpha`` per module from the patterns. The one place this is computed."""

    lora_alpha: float
    r: int | None = None
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    def factor(self, module: str, rank: int) -> float:
        """The factor for ``module``, whose LoRA tensors have ``rank`` rows."""
        rk = pattern_key(self.rank_pattern, module)
        ak = pattern_key(self.alpha_pattern, module)
        r = (self.rank_pattern[rk] if rk is not None else None) or self.r or rank
        alpha = self.alpha_pattern[ak] if ak is not None else self.lora_alpha
        return float(alpha) / (math.sqrt(r) if self.use_rslora else r)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite_alpha(v: Any) -> bool:
    """A number that is finite and within +-MAX_ALPHA (huge integers included: no OverflowError)."""
    if not _num(v):
        return False
    try:
        return math.isfinite(float(v)) and abs(float(v)) <= MAX_ALPHA
    except OverflowError:
        return False


def check_pattern(key: str, source: str, field_name: str) -> None:
    """PEFT matches pattern keys as regexes (``(.*\\.)?(key)$``): compile them now, not mid-build."""
    try:
        re.compile(rf"(.*\.)?({key})$")
    except (re.error, RecursionError, OverflowError) as e:
        raise InvalidInputError(source, f"field {field_name!r}: key {key[:80]!r} is not a valid regex ({e})") from None


def parse_config(obj: Any, source: str) -> LoraConfig:
    """Validate a decoded ``adapter_config.json``; every type error names the field."""

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(source, why)

    if not isinstance(obj, dict):
        raise bad("adapter_config.json is not a JSON object")
    pt = obj.get("peft_type")
    if pt is not None and (not isinstance(pt, str) or pt.upper() != "LORA"):
        raise bad(f"peft_type is {pt!r}; only LORA adapters are supported")
    c: dict[str, Any] = {}  # the fields, checked one by one; the record is built (frozen) at the end
    r = obj.get("r")
    if r is not None and (not isinstance(r, int) or isinstance(r, bool) or not 0 < r <= MAX_RANK):
        raise bad(f"field 'r' must be an integer from 1 to {MAX_RANK}, got {str(r)[:40]}")
    c["r"] = r
    a = obj.get("lora_alpha")
    if a is not None and not finite_alpha(a):
        raise bad(f"field 'lora_alpha' must be a finite number within +-{MAX_ALPHA:g}, got {str(a)[:40]}")
    c["lora_alpha"] = float(a) if a is not None else None
    tm = obj.get("target_modules")
    if tm is not None and not (isinstance(tm, str) or (isinstance(tm, list) and all(isinstance(x, str) for x in tm))):
        raise bad(f"field 'target_modules' must be a list of strings or a regex string, got {type(tm).__name__}")
    if isinstance(tm, str):
        try:
            re.compile(tm)
        except (re.error, RecursionError, OverflowError) as e:
            raise bad(f"field 'target_modules' is not a valid regex ({e})") from None
    c["target_modules"] = sorted(tm) if isinstance(tm, list) else tm
    for name in ("use_rslora", "use_dora", "fan_in_fan_out"):
        v = obj.get(name, False)
        if v is None:
            v = False
        if not isinstance(v, bool):
            raise bad(f"field {name!r} must be true or false, got {v!r}")
        c[name] = v
    for name, typ in (("rank_pattern", int), ("alpha_pattern", float)):
        v = obj.get(name) or {}
        if not isinstance(v, dict) or not all(isinstance(k, str) and finite_alpha(x) and x > 0 for k, x in v.items()):
            raise bad(f"field {name!r} must map module patterns to positive finite numbers (at most {MAX_ALPHA:g})")
        if typ is int and not all(isinstance(x, int) and x <= MAX_RANK for x in v.values()):
            raise bad(f"field {name!r} must map module patterns to integer ranks up to {MAX_RANK}")
        for k in v:
            check_pattern(k, source, name)
        c[name] = {k: typ(x) for k, x in v.items()}
    mts = obj.get("modules_to_save")
    if mts is not None and not (isinstance(mts, list) and all(isinstance(x, str) for x in mts)):
        raise bad("field 'modules_to_save' must be a list of strings or null")
    c["modules_to_save"] = mts or None
    bias = obj.get("bias", "none") or "none"
    if bias not in ("none", "all", "lora_only"):
        raise bad(f"field 'bias' must be none, all or lora_only, got {bias!r}")
    c["bias"] = bias
    for name in ("base_model_name_or_path", "task_type"):
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise bad(f"field {name!r} must be a string, got {type(v).__name__}")
        c[name] = v
    c["peft_type"] = pt
    ltt = obj.get("layers_to_transform")
    if ltt is not None and not (
        isinstance(ltt, int) or (isinstance(ltt, list) and all(isinstance(i, int) for i in ltt))
    ):
        raise bad("field 'layers_to_transform' must be an integer, a list of integers or null")
    c["layers_to_transform"] = ltt
    c["extra"] = {k: v for k, v in obj.items() if k not in LoraConfig.__dataclass_fields__}
    return LoraConfig(**c)


def load_config(path: str | Path) -> LoraConfig:
    return load_config_text(path)[0]


def load_config_text(path: str | Path) -> tuple[LoraConfig, str]:
    """The parsed config and the file's text as it is (kept by the registry: ``verify`` gives PEFT
    the user's own file, not loramgr's reading of it)."""
    p = Path(path)
    text = read_text(p, MAX_CONFIG_BYTES, "adapter config")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InvalidInputError(str(p), "JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise InvalidInputError(str(p), f"invalid JSON ({e.msg} at line {e.lineno})") from None
    except ValueError as e:  # e.g. an integer literal too long to convert
        raise InvalidInputError(str(p), f"invalid JSON ({e})") from None
    return parse_config(obj, str(p)), text
