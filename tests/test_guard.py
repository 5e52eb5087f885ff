"""The guard: every command family over a corpus of malformed inputs. Any exit 1 (a bug in loramgr),
traceback or hang fails the test, naming the case. The corpus is built here: hostile and degenerate
files, special files, and seeded mutations of a real plan."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loramgr.testing import synth
from tests.conftest import invoke

RUNNER = Path(__file__).with_name("guard_runner.py")
PER_CASE_S = 30


def _files(tmp: Path) -> list[Path]:
    """Degenerate and hostile stand-ins for any file argument."""
    out: list[Path] = []

    def put(name: str, data: bytes) -> None:
        (tmp / name).write_bytes(data)
        out.append(tmp / name)

    put("empty.bin", b"")
    put("random.bin", np.random.default_rng(0).bytes(4096))
    put("json-list.json", b"[1, 2, 3]")
    put("json-deep.json", b"[" * 100000 + b"]" * 100000)
    put("json-nan.json", b'{"x": NaN, "schema": "loramgr.plan", "schema_version": 1}')
    put("huge-int.json", b'{"schema": "loramgr.plan", "schema_version": ' + b"9" * 5000 + b"}")
    put("not-utf8.json", b"\xff\xfe\x00{")
    put("header-len-huge.safetensors", (2**62).to_bytes(8, "little") + b"{}")
    put("header-garbage.safetensors", (16).to_bytes(8, "little") + b"{garbage garbage}")
    put("pickle.bin", b"\x80\x04\x95" + b"\x00" * 64)
    d = tmp / "a-directory"
    d.mkdir()
    out.append(d)
    os.mkfifo(tmp / "a-fifo")
    out += [tmp / "a-fifo", Path("/dev/null"), Path("/dev/zero"), tmp / "does-not-exist"]
    return out


FILE_COMMANDS = [
    ["register", "{f}"],
    ["register", "{f}", "--lora-alpha", "8"],
    ["base", "register", "{f}", "--name", "b"],
    ["base", "register", "--name", "b", "--graph", "g={f}"],
    ["encodings", "import", "ad", "{f}", "--base", "tiny"],
    ["register", "{ad}", "--base", "tiny", "--encodings", "{f}", "--name", "withenc"],
    ["calibrate", "--base", "tiny", "--all", "--data", "{f}"],
    ["import-registry", "{f}"],
    ["bundle", "check", "{f}"],
    ["plan-show", "{f}", "--json"],
    ["run", "--plan", "{f}", "--input-ids", "1"],
    ["verify", "--plan", "{f}", "--mode", "sections"],
    ["bundle", "--plan", "{f}", "-o", "{tmp}/b.tar"],
    ["base", "export", "{f}", "--name", "x", "--target-modules", "q_proj", "--max-rank", "4", "-o", "{tmp}/x"],
    ["build", "--base", "tiny", "--backend", "qairt", "--sdk-root", "{f}"],
]

ARG_ABUSE = [
    ["show", ""],
    ["show", "../../etc/passwd"],
    ["show", "a" * 5000],
    ["history", "nope"],
    ["retire", "nope"],
    ["promote", "ad", "--to", "bogus"],
    ["promote", "nope", "--to", "deployed"],
    ["list", "--status", "x"],
    ["list", "nope"],
    ["gc", "--grace", "-1"],
    ["gc", "--grace", "nan"],
    ["fsck", "--grace", "inf"],
    ["weight-list", "--base", "nope"],
    ["build", "--base", "nope"],
    ["plan", "--base", "nope"],
    ["plan"],
    ["validate", "nope", "--base", "tiny"],
    ["validate", "ad", "--base", "nope"],
    ["encodings", "show", "nope"],
    ["encodings", "show", "ad", "--base", "tiny", "--tensor", "nope"],
    ["register", "{ad}", "--name", "../x"],
    ["register", "{ad}", "--version", "../1"],
    ["register", "{ad}", "--tag", "noequals"],
    ["register", "{ad}", "--tag", "../k=v"],
    ["register", "{ad}", "--lora-alpha", "nan", "--name", "n2"],
    ["base", "register", "--name", "../b", "{base}"],
    ["base", "register", "--name", "b2"],
    ["base", "register", "--name", "b3", "--graph", "noequals"],
    ["build", "--base", "tiny", "--jobs", "0"],
    ["build", "--base", "tiny", "--backend", "bogus"],
    ["build", "--base", "tiny", "--dlc", "g=/nonexistent"],
    ["build", "tiny", "--base", "tiny", "--precision", "int4"],
    ["run", "--plan", "{plan}", "--input-ids", "abc"],
    ["run", "--plan", "{plan}", "--input-ids", "-1"],
    ["run", "--plan", "{plan}", "--input-ids", "1", "--steps", "0"],
    ["run", "--plan", "{plan}", "--adapter", "../../x", "--input-ids", "1"],
    ["plan-show", "{plan}", "--adapter", ""],
    ["verify", "--plan", "{plan}", "--tolerance", "nan"],
    ["verify", "--plan", "{plan}", "--adapter", "nope"],
    ["--lock-timeout", "0", "list"],
    ["--lock-timeout", "nan", "list"],
    ["--home", "/dev/null", "list"],
    ["export-registry", "-o", "/dev/null/x.json"],
    ["export-registry", "-o", "{tmp}/a-directory"],
    ["db", "upgrade", "--list"],
    ["bundle"],
    ["bundle", "--plan", "{plan}", "-o", "{plan}"],
    ["bundle", "--plan", "{plan}", "-o", "{tmp}/no/such/dir/b.tar"],
    # the second hardening round
    ["run", "--plan", "{plan}", "--input-ids", "1", "--alpha", "1e39"],
    ["run", "--plan", "{plan}", "--input-ids", "1", "--alpha", "-1e39"],
    ["usecase", "create", "default", "ad", "--base", "tiny"],
    ["usecase", "create", "ad", "ad", "--base", "tiny"],
    ["usecase", "create", "uc", "ad", "--base", "tiny", "--alphas", "1e39"],
    ["group", "create", "default_adapter", "uc", "--base", "tiny"],
    ["register", "{ad}", "--name", "default"],
    ["plan", "--base", "tiny", "--genie-config", "{plan}"],
    ["plan", "--base", "tiny", "-o", "{tmp}/p2.json", "--qnn-ep-configs", "{plan}"],
    ["build", "--base", "tiny", "--backend", "qairt", "--sdk-root", "{tmp}", "--tool-timeout", "nan"],
    ["build", "--base", "tiny", "--backend", "qairt", "--sdk-root", "{tmp}", "--tool-timeout", "1e300"],
    ["verify", "--plan", "{plan}", "--input-ids", "99999999999999999999"],
    ["calibrate", "--base", "tiny", "--all", "--data", "{plan}"],
]


def _mutations(doc: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """Seeded single-point mutations of a real plan: a value replaced by a hostile one, a key dropped."""
    rng = random.Random(seed)
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())
    hostile = [
        None,
        -1,
        2**70,
        1e308,
        "",
        "../../../etc/passwd",
        "/etc/passwd",
        [],
        {},
        "x" * 10000,
        True,
        0.5,
        "a/../../b",
        [None],
        {"path": ".."},
    ]
    out = []
    for _ in range(n):
        d = json.loads(json.dumps(doc))
        path = rng.choice(paths[1:])
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.25 and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = rng.choice(hostile)
        out.append(d)
    return out


@pytest.mark.slow
def test_no_command_exits_1_tracebacks_or_hangs_on_malformed_input(tmp_path, home):
    synth.write_base(tmp_path / "base.onnx", synth.module_paths())
    ad = synth.write_adapter(
        tmp_path / "ad",
        synth.adapter_tensors(synth.module_paths(), 4, seed=1),
        synth.peft_config(4, 8, ["q_proj", "v_proj"]),
    )
    for args in (
        ["base", "register", tmp_path / "base.onnx", "--name", "tiny"],
        ["register", ad],
        ["validate", "ad", "--base", "tiny"],
        ["build", "--base", "tiny", "-o", tmp_path / "out"],
        ["plan", "--base", "tiny"],
    ):
        assert invoke(*args).exit_code == 0, args
    plan = tmp_path / "out" / "plan.json"
    fill = {"tmp": str(tmp_path), "ad": str(ad), "plan": str(plan), "base": str(tmp_path / "base.onnx")}
    cases: list[list[str]] = []
    for f in _files(tmp_path / "corpus" if (tmp_path / "corpus").mkdir() is None else tmp_path):
        cases += [[a.format(f=f, **fill) for a in cmd] for cmd in FILE_COMMANDS]
    cases += [[a.format(**fill) for a in cmd] for cmd in ARG_ABUSE]
    doc = json.loads(plan.read_text())
    n = int(os.environ.get("LORAMGR_GUARD_MUTATIONS", "60"))
    for i, m in enumerate(_mutations(doc, n, seed=int(os.environ.get("LORAMGR_GUARD_SEED", "11")))):
        p = plan.with_name(f"mutant-{i}.json")
        p.write_text(json.dumps(m))
        cases += [
            ["plan-show", str(p), "--adapter", "ad", "--json"],
            ["run", "--plan", str(p), "--input-ids", "1"],
            ["bundle", "--plan", str(p), "-o", str(tmp_path / f"m{i}.tar")],
        ]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    p = subprocess.run(
        [sys.executable, str(RUNNER), str(spec), str(PER_CASE_S)],
        capture_output=True,
        text=True,
        timeout=PER_CASE_S * 4 + 10 * len(cases),
        env=dict(os.environ),
        cwd=tmp_path,
    )
    results = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), p.stderr[-3000:]
    bad = [
        f"{' '.join(cases[r['case']])[:160]} -> exit {r['exit']}: {r['stderr'].strip()[-300:]}"
        for r in results
        if r["exit"] in (1, "hang", None)
        or not isinstance(r["exit"], int)
        or "Traceback" in r["stderr"]
        or "unexpected" in r["stderr"]
    ]
    assert not bad, f"{len(bad)} of {len(cases)} cases fell short:\n" + "\n".join(bad[:30])
