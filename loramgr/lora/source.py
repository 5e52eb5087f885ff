"""What a user hands to ``loramgr register``: a ``.safetensors`` file or a PEFT adapter directory.

Everything here reads headers and small JSON only; tensor bytes are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from loramgr.errors import InvalidInputError, NotFoundError
from loramgr.formats.peft import LoraConfig, load_config_text
from loramgr.formats.safetensors import FLOAT_DTYPES, Header, read_header, sniff_foreign
from loramgr.infra.files import readable_dir, regular_file
from loramgr.lora.mapping import parse_key, summarize_targets
from loramgr.names import sanitize_stem

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterSource:
    weights: Path
    config_path: Path | None
    config: LoraConfig | None
    header: Header
    default_name: str
    config_text: str | None = None  # adapter_config.json as the user wrote it

    @property
    def rank(self) -> int | None:
        """The largest rank present in the tensors (what a base's max rank must hold); the config's
        ``r`` only when no LoRA pair is present."""
        ranks = [t.shape[0] for t in self.header.tensors.values() if len(t.shape) == 2 and _is_a(t.key)]
        if ranks:
            return max(ranks)
        return self.config.r if self.config else None

    @property
    def dtype(self) -> str:
        dts = sorted(
            {t.dtype for t in self.header.tensors.values() if t.dtype in FLOAT_DTYPES}
            or {t.dtype for t in self.header.tensors.values()}
        )
        return dts[0] if len(dts) == 1 else ("mixed:" + ",".join(dts) if dts else "none")

    @property
    def target_modules(self) -> list[str]:
        return summarize_targets(self.config.target_modules if self.config else None, self.header.tensors)

    def config_digest(self, lora_alpha: float | None) -> str:
        """Identity of everything besides the weight bytes that changes the adapter's meaning."""
        cfg = self.config.to_json() if self.config else None
        blob = json.dumps({"config": cfg, "lora_alpha": lora_alpha}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _is_a(key: str) -> bool:
    return parse_key(key).role == "A"


def _inside(child: Path, parent: Path, what: Path) -> Path:
    real = Path(os.path.realpath(child))
    if not real.is_relative_to(Path(os.path.realpath(parent))):
        raise InvalidInputError(str(what), f"is a symlink pointing outside {parent} ({real}); refusing it")
    return real


def open_source(path: str | os.PathLike[str]) -> AdapterSource:
    """Resolve PATH into the weights file, its optional PEFT config and the checked header."""
    p = Path(path)
    try:
        is_dir = p.is_dir()
        exists = is_dir or p.exists()
    except OSError as e:
        raise InvalidInputError(str(p), f"cannot read it: {e.strerror or e}") from None
    if not exists:
        raise NotFoundError(str(p), "no such file or directory")
    config_path: Path | None = None
    if is_dir:
        readable_dir(p, "adapter directory")
        weights = p / WEIGHTS
        if not weights.exists():
            for alt in ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin"):
                if (p / alt).exists():
                    sniff_foreign(p / alt, b"")
            raise InvalidInputError(
                str(p), f"is a directory without {WEIGHTS}", hint="pass a PEFT adapter directory or a .safetensors file"
            )
        _inside(weights, p, weights)
        if (p / CONFIG).exists():
            config_path = p / CONFIG
            _inside(config_path, p, config_path)
        default_name = p.name
    else:
        weights = p
        if p.name == WEIGHTS and (p.parent / CONFIG).exists():
            config_path = p.parent / CONFIG
            _inside(config_path, p.parent, config_path)
            default_name = p.parent.name
        else:
            default_name = p.stem
    regular_file(weights, "adapter weights file")
    if config_path is not None:
        regular_file(config_path, "adapter config")
    header = read_header(weights)
    config, config_text = load_config_text(config_path) if config_path else (None, None)
    return AdapterSource(
        weights=weights,
        config_path=config_path,
        config=config,
        header=header,
        default_name=sanitize_stem(default_name),
        config_text=config_text,
    )
