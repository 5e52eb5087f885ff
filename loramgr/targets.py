"""HTP targets: the Snapdragon SoCs Qualcomm's QNN HTP backend knows, by part number.

A target is what ``build --backend qnn-ep --target`` compiles for: the QNN ``soc_model`` number (the
QNN EP provider option of that name) and the HTP architecture it implies. Source: Qualcomm's QNN SDK
documentation, "Supported Snapdragon devices"
(https://docs.qualcomm.com/bundle/publicresource/topics/80-63442-50/overview.html#supported-snapdragon-devices),
as transcribed in Qualcomm-authored public code: google-ai-edge/LiteRT
``litert/vendors/qualcomm/core/schema/soc_table.h`` ("derived from the QAIRT 2.47 documentation") and
``supported_soc.csv`` (architectures), cross-checked with pytorch/executorch
``backends/qualcomm/serialization/qc_schema.py`` and quic/ai-hub-apps' Genie tutorial. Rows whose
architecture no source gives, or whose sources disagree, are left out, and so are the SoCs that QNN
2.51's HTP compiler (onnxruntime-qnn 2.7) refuses to create a device for: SM8635, SM7675, SM7550,
SM7475, SM7435, SM7350, SM7325, SM7315, SM6450, QCS6490, QCM6690, SXR1230P, SSG2115P, SSG2125P,
SAR2230P, SW6100 (tests/test_htp.py compiles for every row kept). For SM8475 and SM7450 (published
as v69) that compiler writes ``arch=68`` into the context: see :data:`COMPILED_ARCH`. 60 (SC8380XP) and 69 (SM8750)
were also measured here: the compiled context says ``soc_type=SM8750;arch=79``.

Stdlib only: the plan runtime and ``target list`` read it without ONNX Runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loramgr.errors import UsageError


@dataclass(frozen=True)
class Target:
    """One SoC: its part number (lowercase), QNN ``soc_model``, HTP architecture (v73 -> 73) and the
    names users know it by."""

    name: str
    soc_model: int
    htp_arch: int
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "soc_model": self.soc_model,
            "htp_arch": self.htp_arch,
            "aliases": list(self.aliases),
        }


TARGETS: tuple[Target, ...] = (
    Target("sm8850", 87, 81, ("Snapdragon 8 Elite Gen 5",)),
    Target("sm8845", 97, 81, ("Snapdragon 8 Gen 5", "SM8845P")),
    Target("sm8750", 69, 79, ("Snapdragon 8 Elite", "SM8750P", "Snapdragon 8 Gen 4")),
    Target("sm8650", 57, 75, ("Snapdragon 8 Gen 3",)),
    Target("sm8550", 43, 73, ("Snapdragon 8 Gen 2",)),
    Target("sm8475", 42, 69, ("Snapdragon 8+ Gen 1",)),
    Target("sm8450", 36, 69, ("Snapdragon 8 Gen 1",)),
    Target("sm8350", 30, 68, ("Snapdragon 888", "Snapdragon 888+", "SM8350P")),
    Target("sm7450", 41, 69, ("Snapdragon 7 Gen 1",)),
    Target("sc8480xp", 88, 81, ("Snapdragon X2 Elite",)),
    Target("sc8380xp", 60, 73, ("Snapdragon X Elite", "Snapdragon X Plus", "X Elite", "X Plus")),
    Target("qcs8550", 66, 73, ("QCM8550", "Dragonwing QCS8550")),
    Target("qcs9100", 77, 73, ("QCS9075", "Dragonwing IQ-9075")),
    Target("qcs8300", 82, 75, ("QCS8275", "Dragonwing IQ-8275")),
    Target("qcs8625", 90, 75, ()),
    Target("sa8797", 72, 81, ("SA8797P",)),
    Target("sa8295", 39, 68, ("SA8295P",)),
    Target("sa8255", 52, 73, ("SA8255P", "SA8775", "SA8775P", "SA8650", "SA8630")),
    Target("sxr2330p", 75, 79, ()),
    Target("sxr2230p", 53, 69, ("Snapdragon XR2 Gen 2",)),
)


# -- where a build puts a target's compiled files -------------------------------------------------------
#: where a target's compiled files go, relative to the build's output directory
TARGETS_DIR = "targets"
SHARED, UNSHARED = "shared", "unshared"
ENCODINGS_FILE = "qdq_encodings.json"  # a quantized target's LoRA input encodings


def context_rel(target: str, variant: str, name: str) -> str:
    """``targets/<target>/<shared|unshared>/<name>``: the one place the layout is spelled."""
    return f"{TARGETS_DIR}/{target}/{variant}/{name}"


def parse_context_rel(rel: str) -> tuple[str, str] | None:
    """(target, variant) of a path :func:`context_rel` made, or None."""
    parts = Path(rel).parts
    if len(parts) == 4 and parts[0] == TARGETS_DIR and parts[2] in (SHARED, UNSHARED):
        return parts[1], parts[2]
    return None


#: where QNN 2.51's compiler writes another architecture into the context than the published one
COMPILED_ARCH = {"sm8475": 68, "sm7450": 68}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", text.lower().replace("snapdragon", ""))


def find_target(text: str) -> Target:
    """A target by part number, alias ("Snapdragon 8 Elite", "X Elite") or soc_model number."""
    key = _key(text)
    for t in TARGETS:
        if key and (key == _key(t.name) or key == str(t.soc_model) or any(key == _key(a) for a in t.aliases)):
            return t
    raise UsageError(f"--target {text}", "is not a SoC the HTP backend knows", hint="`loramgr target list` shows them")


def parse_targets(text: str) -> list[Target]:
    """``sm8750,sc8380xp`` -> targets, each once, in the order given."""
    out: dict[str, Target] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        t = find_target(item)
        out.setdefault(t.name, t)
    if not out:
        raise UsageError(f"--target {text}", "name at least one SoC, e.g. sm8750")
    return list(out.values())
