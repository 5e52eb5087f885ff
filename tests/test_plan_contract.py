"""One plan contract, two readers: a corpus of hostile plans run through the Python runtime
(``Plan.load(...).verify()``) and the C library (``loramgr-plan verify``), each case with the exit code
both must give. Every case is a small real plan with real files, edited one way: duplicate keys, NUL
in names and paths, names that clash, unknown slot adapters, links out of the plan's directory, FIFOs
and devices, text cJSON would take and Python's json refuses, alphas no float32 holds. Plus a plan of
100k adapters and one of 100k use cases through both (the C loops were quadratic: minutes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_c_runtime import _build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("c-contract")) / "loramgr-plan"


def _file(d: Path, rel: str, data: bytes) -> dict[str, Any]:
    (d / rel).parent.mkdir(parents=True, exist_ok=True)
    (d / rel).write_bytes(data)
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _section(d: Path, rel: str, data: bytes, owner: str, name: str, kind: str) -> dict[str, Any]:
    return _file(d, rel, data) | {
        "name": rel,
        "graphs": ["g"],
        "shared": False,
        "kind": kind,
        "owner": {"type": owner, "name": name},
    }


def _adapter(d: Path, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "ref": f"{name}@1",
        "recommended_alpha": 1.0,
        "sections": [_section(d, f"s/{name}.bin", name.encode() * 3, "adapter", name, "section")],
        "io_encodings": {},
        "weight_encodings": {},
        "steps": [{"op": "apply_section", "path": f"s/{name}.bin"}, {"op": "execute"}],
    }


def valid_plan(d: Path) -> dict[str, Any]:
    """Two adapters, a use case of both, the default adapter: schema 2 with kinds and owners."""
    use_case = {
        "name": "both",
        "ref": "both",
        "adapters": [{"name": "a@1", "slot": 0}, {"name": "b@1", "slot": 1}],
        "alphas": [1.0, 0.5],
        "recommended_alpha": 1.0,
        "sections": [_section(d, "s/both.bin", b"both", "use_case", "both", "use_case_section")],
        "io_encodings": {},
        "weight_encodings": {},
        "steps": [
            {"op": "apply_section", "path": "s/both.bin"},
            {"op": "set_alpha", "tensor": "lora_alpha", "values": [1.0, 0.5]},
        ],
    }
    default = {
        "sections": [_section(d, "s/default.bin", b"\0" * 8, "default", "default", "default_section")],
        "io_encodings": {},
        "steps": [{"op": "apply_section", "path": "s/default.bin"}],
    }
    graph = _file(d, "g.onnx", b"graph") | {"name": "g", "kind": "single"}
    return {
        "schema": "loramgr.plan",
        "schema_version": 2,
        "build_id": 1,
        "backend": "ort",
        "base": {"name": "b", "version": "1", "precision": "fp32", "graphs": [graph]}
        | {"contexts": [{"name": "g", "graphs": ["g"]}]},
        "alpha": {"tensor": "lora_alpha", "default": 1.0, "slots": 2},
        "rules": {},
        "adapters": [_adapter(d, "a"), _adapter(d, "b")],
        "use_cases": [use_case],
        "default_adapter": default,
        "reset_steps": {},
    }


Edit = Callable[[dict[str, Any], Path], Any]  # edits the doc and/or the files; may return the plan's text


def _dup_keys_in_a_section(doc: dict[str, Any], d: Path) -> str:
    other = _file(d, "s/other.bin", b"OTHER")
    s = doc["adapters"][0]["sections"][0]
    twice = json.dumps(s)[:-1] + f', "path": "s/other.bin", "sha256": "{other["sha256"]}", "size": {other["size"]}}}'
    return json.dumps(doc).replace(json.dumps(s), twice)


def _use_case_twice(doc: dict[str, Any], d: Path, ref: str | None = None) -> None:
    again = json.loads(json.dumps(doc["use_cases"][0]))
    again.update(alphas=[0.25, 0.75], **({"ref": ref} if ref else {}))
    doc["use_cases"].append(again)


def _rename_use_case(doc: dict[str, Any], name: str) -> None:
    u = doc["use_cases"][0]
    u["name"] = u["ref"] = name
    for s in u["sections"]:
        s["owner"]["name"] = name


def _groups_twice(doc: dict[str, Any], d: Path) -> None:
    doc["groups"] = [
        {"name": "G", "members": ["both"], "sections": [_section(d, f"s/{n}.bin", n.encode(), "group", "G", k)]}
        for n, k in (("g1", "group_quant_section"), ("g2", "group_quant_section"))
    ]
    doc["use_cases"][0]["group"] = "G"


def _link_out(doc: dict[str, Any], d: Path) -> None:
    """s/a.bin becomes a link to a file outside the plan whose checksum the plan records."""
    data = b"SECRET-OUTSIDE"
    (d.parent / "outside.bin").write_bytes(data)
    (d / "s/a.bin").unlink()
    (d / "s/a.bin").symlink_to(d.parent / "outside.bin")
    doc["adapters"][0]["sections"][0].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _dir_link_out(doc: dict[str, Any], d: Path) -> None:
    (d.parent / "elsewhere").mkdir()
    data = b"SECRET-DIR"
    (d.parent / "elsewhere" / "a.bin").write_bytes(data)
    (d / "s2").symlink_to(d.parent / "elsewhere")
    doc["adapters"][0]["sections"][0].update(path="s2/a.bin", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    doc["adapters"][0]["steps"][0]["path"] = "s2/a.bin"


def _fifo_section(doc: dict[str, Any], d: Path) -> None:
    (d / "s/a.bin").unlink()
    os.mkfifo(d / "s/a.bin")


def _dev_zero(doc: dict[str, Any], d: Path) -> None:
    (d / "s/a.bin").unlink()
    (d / "s/a.bin").symlink_to("/dev/zero")
    doc["adapters"][0]["sections"][0]["size"] = 2**52


def _missing(doc: dict[str, Any], d: Path) -> None:
    (d / "s/a.bin").unlink()


def _tampered(doc: dict[str, Any], d: Path) -> None:
    (d / "s/a.bin").write_bytes(b"aaX")  # the recorded size, other bytes


CASES: dict[str, tuple[Edit, int]] = {
    "valid": (lambda doc, d: None, 0),
    "duplicate keys in a section": (_dup_keys_in_a_section, 4),
    "duplicate top-level key": (lambda doc, d: json.dumps(doc)[:-1] + ', "adapters": []}', 4),
    "NUL in an adapter name": (lambda doc, d: doc["adapters"][0].update(name="a\u0000evil"), 4),
    "NUL in a section path": (lambda doc, d: doc["adapters"][0]["sections"][0].update(path="s/a.bin\u0000x"), 4),
    "NUL in a tensor name": (lambda doc, d: doc["adapters"][0]["io_encodings"].update({"t\u0000x": []}), 4),
    "a use case twice": (_use_case_twice, 4),
    "two use cases of one name": (lambda doc, d: _use_case_twice(doc, d, ref="both2"), 4),
    "a use case named like an adapter": (lambda doc, d: _rename_use_case(doc, "a"), 4),
    "a use case named like an adapter's ref": (lambda doc, d: _rename_use_case(doc, "a@1"), 4),
    "a use case named default": (lambda doc, d: _rename_use_case(doc, "default"), 4),
    "an adapter named default_adapter": (lambda doc, d: doc["adapters"][1].update(name="default_adapter"), 4),
    "a slot naming no adapter": (lambda doc, d: doc["use_cases"][0]["adapters"][1].update(name="nope@9"), 4),
    "a group twice": (_groups_twice, 4),
    "a link out of the plan": (_link_out, 4),
    "a linked directory out of the plan": (_dir_link_out, 4),
    "a FIFO section": (_fifo_section, 4),
    "/dev/zero with a huge size": (_dev_zero, 4),
    "a missing section": (_missing, 8),
    "a tampered section": (_tampered, 8),
    "trailing garbage": (lambda doc, d: json.dumps(doc) + " garbage{", 4),
    "a byte-order mark": (lambda doc, d: "\ufeff" + json.dumps(doc), 4),
    "invalid UTF-8": (lambda doc, d: json.dumps(doc).encode().replace(b'"ort"', b'"or\xfft"'), 4),
    "a raw control character": (lambda doc, d: json.dumps(doc).replace('"ort"', '"o\tr"'), 4),
    "a NaN literal": (lambda doc, d: json.dumps(doc).replace('"default": 1.0', '"default": NaN'), 4),
    "an alpha past float32": (lambda doc, d: doc["adapters"][0].update(recommended_alpha=1e39), 4),
    "a set_alpha step past float32": (lambda doc, d: doc["use_cases"][0]["steps"][1].update(values=[1.0, 4e38]), 4),
    "a use-case alpha past float16 on fp16": (
        lambda doc, d: doc["base"].update(precision="fp16") or doc["use_cases"][0].update(alphas=[7e4, 1.0]),
        4,
    ),
}

PY = """
import sys
from loramgr.errors import LoramgrError
from loramgr.runtime import Plan
try:
    Plan.load(sys.argv[1]).verify()
except LoramgrError as e:
    print(e.message, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def _readers(tool: Path, plan: Path, *c_args: str, timeout: float = 60) -> tuple[int, int, str]:
    py = subprocess.run([sys.executable, "-c", PY, plan], capture_output=True, text=True, timeout=timeout)
    c = subprocess.run([tool, *(c_args or ("verify",)), plan], capture_output=True, text=True, timeout=timeout)
    return py.returncode, c.returncode, f"python: {py.stderr.strip()[-300:]} | C: {c.stderr.strip()[-300:]}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_readers_give_the_same_code(tool, tmp_path, case):
    edit, code = CASES[case]
    d = tmp_path / "plan"
    doc = valid_plan(d)
    text = edit(doc, d)
    text = json.dumps(doc) if text is None else text
    (d / "plan.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    py, c, said = _readers(tool, d / "plan.json")
    assert (py, c) == (code, code), said


def test_a_fifo_plan_is_refused_by_both_without_blocking(tool, tmp_path):
    os.mkfifo(tmp_path / "plan.json")
    py, c, said = _readers(tool, tmp_path / "plan.json", timeout=20)
    assert (py, c) == (4, 4), said


@pytest.mark.parametrize("kind", ["adapters", "use_cases"])
def test_a_plan_of_100k_entries_loads_in_both(tool, tmp_path, kind):
    """Both readers open it (the C loops were quadratic: about 5 minutes for either plan)."""
    d = tmp_path / "plan"
    doc = valid_plan(d)
    n = 100_000
    if kind == "adapters":
        a, sec = doc["adapters"][0], doc["adapters"][0]["sections"][0]
        doc["adapters"] = [
            a | {"name": f"a{i}", "ref": f"a{i}@1", "sections": [sec | {"owner": {"type": "adapter", "name": f"a{i}"}}]}
            for i in range(n)
        ]
        doc["use_cases"][0]["adapters"] = [{"name": "a0@1", "slot": 0}, {"name": "a1@1", "slot": 1}]
    else:
        u, sec = doc["use_cases"][0], doc["use_cases"][0]["sections"][0]
        doc["use_cases"] = [
            u | {"name": f"u{i}", "ref": f"u{i}", "sections": [sec | {"owner": {"type": "use_case", "name": f"u{i}"}}]}
            for i in range(n)
        ]
    (d / "plan.json").write_text(json.dumps(doc))
    py, c, said = _readers(tool, d / "plan.json", "adapters", timeout=120)
    assert (py, c) == (0, 0), said
