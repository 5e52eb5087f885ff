"""PEFT tensor keys <-> the base graph's attachment points.

PEFT writes keys like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (saved) or
``...q_proj.lora_A.default.weight`` (in-memory state dict), ``lora_embedding_A`` for embeddings, and
also DoRA magnitudes, LoRA biases and ``modules_to_save`` full weights that a LoRA-v2 base cannot
apply. :func:`parse_key` classifies every key; :class:`AttachmentIndex` finds a module's attachment
point by exact path or by path modulo the wrapper prefix (``model.`` vs ``transformer.``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PEFT_PREFIX = "base_model.model."
#: leading module names that only wrap the decoder (HF's ``model.`` / ``transformer.`` ...).
WRAPPERS = ("model", "transformer", "base_model", "decoder", "language_model", "gpt_neox")

_ROLE = re.compile(
    r"^(?P<module>.+?)\.(?P<role>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_down|lora_up|"
    r"lora_magnitude_vector)(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?(?:\.(?P<param>weight|bias))?$"
)

#: roles a LoRA-v2 base can apply (A/B pairs); the rest are validation problems.
ROLE_A = {"lora_A": "A", "lora_embedding_A": "A", "lora_down": "A"}
ROLE_B = {"lora_B": "B", "lora_embedding_B": "B", "lora_up": "B"}


@dataclass(frozen=True)
class KeyInfo:
    key: str
    module: str  # module path without the PEFT prefix
    role: str  # "A", "B", "dora_magnitude", "lora_bias", "full_weight", "alpha", "unknown"
    embedding: bool = False
    param: str = "weight"


def strip_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


@functools.lru_cache(maxsize=1 << 16)
def parse_key(key: str) -> KeyInfo:
    """Classify one adapter tensor key (pure; no shapes involved). Cached: the adapters of one base
    share their keys, and a build re-checks every adapter it covers."""
    k = strip_prefix(key)
    m = _ROLE.match(k)
    if m:
        role, param = m.group("role"), m.group("param") or "weight"
        adapter = m.group("adapter")
        if adapter in ("weight", "bias"):  # "lora_A.weight" matched the adapter group
            param = adapter
        module = m.group("module")
        if role == "lora_magnitude_vector":
            return KeyInfo(key, module, "dora_magnitude")
        if param == "bias":
            return KeyInfo(key, module, "lora_bias", param="bias")
        ab = ROLE_A.get(role) or ROLE_B.get(role) or "other"  # the regex admits only A/B roles here
        return KeyInfo(key, module, ab, embedding=role.startswith("lora_embedding"))
    if k.endswith(".alpha"):
        return KeyInfo(key, k[: -len(".alpha")], "alpha")
    if ".modules_to_save." in k or k.endswith(".weight") or k.endswith(".bias"):
        module = k.split(".modules_to_save.")[0] if ".modules_to_save." in k else k.rsplit(".", 1)[0]
        return KeyInfo(
            key, module, "full_weight" if not k.endswith(".bias") else "lora_bias", param=k.rsplit(".", 1)[-1]
        )
    return KeyInfo(key, k, "unknown")


def unwrap(module: str) -> str:
    """Module path without leading wrapper names: ``model.layers.0.x`` -> ``layers.0.x``."""
    parts = module.split(".")
    i = 0
    while i < len(parts) - 1 and parts[i] in WRAPPERS:
        i += 1
    return ".".join(parts[i:])


def target_matches(module: str, targets: Sequence[str] | str | None) -> bool:
    """PEFT's own rule: a list matches exact names or ``.name`` suffixes; a string is a full regex."""
    if targets is None:
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


class AttachmentIndex:
    """Find attachment points by module path, tolerating a different wrapper prefix."""

    def __init__(self, module_paths: Iterable[str]) -> None:
        self.exact = set(module_paths)
        self._unwrapped: dict[str, str | None] = {}
        for mp in self.exact:
            u = unwrap(mp)
            self._unwrapped[u] = None if u in self._unwrapped else mp  # None marks ambiguity

    def find(self, module: str) -> str | None:
        if module in self.exact:
            return module
        return self._unwrapped.get(unwrap(module))


def group_pairs(keys: Iterable[str]) -> dict[str, dict[str, KeyInfo]]:
    """module path -> {"A": KeyInfo, "B": KeyInfo} for the LoRA pairs among ``keys``."""
    out: dict[str, dict[str, KeyInfo]] = {}
    for key in keys:
        ki = parse_key(key)
        if ki.role in ("A", "B"):
            out.setdefault(ki.module, {})[ki.role] = ki
    return out


def module_leaf_names(modules: Iterable[str]) -> list[str]:
    return sorted({m.rsplit(".", 1)[-1] for m in modules})


def summarize_targets(config_targets: Sequence[str] | str | None, keys: Mapping[str, object]) -> list[str]:
    """Target modules as a sorted list: the config's list, or the leaf names found in the keys."""
    if isinstance(config_targets, list) and config_targets:
        return sorted(config_targets)
    return module_leaf_names(group_pairs(keys))
