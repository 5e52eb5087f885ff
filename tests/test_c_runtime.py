"""runtime-c/: the C plan reader built with CMake and checked against the Python runtime on plans the
Python CLI writes here: ctest (queries, the switch driver's call order from Python's plan.steps),
`loramgr-plan` answers equal to the Python runtime's, exit codes, the malformed-plan corpus under
ASan/UBSan, a bounded libFuzzer run, and valgrind on the normal path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loramgr.testing import synth
from tests.conftest import invoke
from tests.test_guard import _mutations

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parent.parent / "runtime-c"


def _build(out: Path, *flags: str, cc: str | None = None) -> Path:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed (`bash scripts/test.sh` installs cmake, clang, libcjson-dev and valgrind)")
    env = dict(os.environ, **({"CC": cc} if cc else {}))
    for cmd in (
        ["cmake", "-S", str(SRC), "-B", str(out), "-DCMAKE_BUILD_TYPE=Debug", *flags],
        ["cmake", "--build", str(out), "-j", "2"],
    ):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("c-build"))


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("c-asan"), "-DLMP_SANITIZE=ON", cc=_clang())


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("c-fuzz"), "-DLMP_FUZZ=ON", cc=_clang())


@pytest.fixture(params=["v2-scalar-alpha", "v2-use-cases", "v2-groups"])
def plan(tmp_path: Path, request) -> Path:
    """A plan the Python CLI writes: a base with one scalar alpha; one with alpha slots and a use case
    of both adapters; or one with int8 LoRA inputs whose two use cases form a group (a quantization
    section of its own). Schema 2 each; version 1 plans are the first without use_cases."""
    slots = 2 if request.param in ("v2-use-cases", "v2-groups") else None
    grouped = request.param == "v2-groups"
    synth.write_base(tmp_path / "g.onnx", synth.module_paths(), max_adapters=slots)
    if grouped:
        import onnx

        from loramgr.export.onnx_io import quantize_lora_inputs

        m = onnx.load(str(tmp_path / "g.onnx"))
        quantize_lora_inputs(m, [f"{mp}.lora_{x}.weight" for mp in synth.module_paths() for x in "AB"], 8)
        onnx.save(m, str(tmp_path / "g.onnx"))
    graphs = ["--graph", f"prefill={tmp_path / 'g.onnx'}", "--graph", f"decode={tmp_path / 'g.onnx'}"]
    precision = ["--precision", "int8"] if grouped else []
    assert invoke("base", "register", "--name", "tiny", *graphs, *precision).exit_code == 0
    for name, seed, lo, hi in (("a4", 3, -1.5, 2.25), ("a8", 4, -0.75, 0.5)):
        d = synth.write_adapter(
            tmp_path / name,
            synth.adapter_tensors(synth.module_paths(), 4, seed=seed),
            synth.peft_config(4, 8, ["q_proj", "v_proj"]),
        )
        e = {
            "version": "0.6.1",
            "param_encodings": {},
            "activation_encodings": {
                t: [
                    {
                        "bitwidth": 8,
                        "dtype": "int",
                        "is_symmetric": "False",
                        "min": lo * k,
                        "max": hi * k,
                        "scale": (hi - lo) * k / 255,
                        "offset": round(lo * 255 / (hi - lo)),
                    }
                ]
                for k, t in enumerate(("out0", "out1", "out2", "out3"), 1)
            },
        }
        (tmp_path / f"{name}.encodings").write_text(json.dumps(e))
        assert invoke("register", d, "--base", "tiny", "--encodings", tmp_path / f"{name}.encodings").exit_code == 0
        assert invoke("validate", name, "--base", "tiny").exit_code == 0
    if slots:
        assert invoke("usecase", "create", "both", "--base", "tiny", "a4", "a8", "--alphas", "1,0.5").exit_code == 0
    if grouped:
        assert invoke("usecase", "create", "solo", "--base", "tiny", "a8").exit_code == 0
        assert invoke("group", "create", "g", "--base", "tiny", "both", "solo").exit_code == 0
    assert invoke("build", "--base", "tiny", "--share-adapters", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    return tmp_path / "out" / "plan.json"


def _c(build: Path, *args: object, want: int = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([str(build / "loramgr-plan"), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert p.returncode == want, (args, p.returncode, p.stderr)
    return p


def _expected_calls(py_plan, name: str) -> list[str]:
    """What the switch driver must call, derived from the Python runtime's plan.steps(name)."""
    entry = py_plan.entry(name)
    calls = []
    for s in py_plan.steps(name):
        if s["op"] == "create_context":
            calls.append("create_context")
        elif s["op"] == "apply_section":
            calls.append(f"apply_section:{s['path']}")
        elif s["op"] == "update_io_encodings":
            calls += [f"set_io_encoding:{t}" for t in entry.io_encodings()]
        elif s["op"] == "set_alpha":
            values = s["values"] if "values" in s else [s["value"]]
            calls.append(f"set_alpha:{s['tensor']}=" + ",".join(f"{v:g}" for v in values))  # every slot
        elif s["op"] == "execute":
            calls.append("execute")
    return calls


def test_ctest_queries_and_switch_order_against_python(build, plan, tmp_path):
    from loramgr.runtime import Plan

    py = Plan.load(plan)
    lines = ["\t".join([n, *_expected_calls(py, n)]) for n in [*py.adapters, *py.use_cases, "default"]]
    (tmp_path / "expected.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, LMP_TEST_PLAN=str(plan), LMP_TEST_EXPECTED=str(tmp_path / "expected.txt"))
    p = subprocess.run(
        ["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0 and "100% tests passed" in p.stdout and "Skipped" not in p.stdout, p.stdout + p.stderr


def test_loramgr_plan_answers_equal_the_python_runtime(build, plan):
    from loramgr.runtime import Plan

    py = Plan.load(plan)
    listing = json.loads(_c(build, "adapters", plan).stdout)
    assert listing["adapters"] == list(py.adapters) and listing["graphs"] == list(py.graphs)
    assert listing["use_cases"] == list(py.use_cases)
    for name in [*py.adapters, *py.use_cases, "default"]:
        entry = py.entry(name)
        got = json.loads(_c(build, "sections", plan, name).stdout)
        want = [
            {
                "name": s.name,
                "graphs": list(s.graphs),
                "path": str(s.path),
                "sha256": s.sha256,
                "size": s.size,
                "shared": s.shared,
                "kind": s.kind.value,
                "owner": {"type": s.owner.type.value, "name": s.owner.name},
            }
            for s in entry.sections()
        ]
        assert all(w["owner"]["name"] == (name if name == "default" else entry.name) for w in want)
        assert got["sections"] == want, name
        for g in py.graphs:
            one = json.loads(_c(build, "sections", plan, name, g).stdout)["sections"]
            assert one == [next(w for w in want if g in w["graphs"])]
        steps = json.loads(_c(build, "steps", plan, name).stdout)["steps"]
        assert steps == py.steps(name), name
        for tensor, entries in (entry.io_encodings() or {}).items():
            got_e = json.loads(_c(build, "encoding", plan, name, tensor).stdout)
            want_e = entries[0]
            for k in ("bitwidth", "is_symmetric", "min", "max", "scale", "offset"):
                assert got_e[k] == want_e[k], (name, tensor, k)
        for tensor, entries in list(entry.weight_encodings().items())[:3]:
            got_w = json.loads(_c(build, "encoding", plan, name, tensor).stdout)
            assert [g["scale"] for g in got_w] == [e["scale"] for e in entries]


def test_both_readers_refuse_a_section_listed_under_another_owner(build, plan, tmp_path):
    """A section's kind and owner must be those of the entry listing it (a runtime switching by owner
    must never apply another owner's file): Python and C refuse the same edits with exit 4."""
    from loramgr.runtime import Plan, PlanFormatError

    doc = json.loads(plan.read_text())
    cases = {
        "owner": lambda d: d["adapters"][0]["sections"][0].update(owner={"type": "use_case", "name": "x"}),
        "name": lambda d: d["adapters"][0]["sections"][0]["owner"].update(name=d["adapters"][1]["name"]),
        "kind": lambda d: d["adapters"][0]["sections"][0].update(kind="default_section"),
        "unknown": lambda d: d["default_adapter"]["sections"][0].update(kind="bogus"),
    }
    for what, edit in cases.items():
        bad = json.loads(json.dumps(doc))
        edit(bad)
        p = plan.parent / f"bad-{what}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(PlanFormatError):
            Plan.load(p)
        _c(build, "sections", p, bad["adapters"][0]["name"], want=4)


def test_exit_codes_match_the_python_cli(build, plan, tmp_path):
    assert "not in the plan" in _c(build, "encoding", plan, "nope", "out0", want=3).stderr
    _c(build, "encoding", plan, "a4", "no_such_tensor", want=3)
    _c(build, "sections", plan, "a4", "no_such_graph", want=3)
    (tmp_path / "bad.json").write_text('{"schema": "loramgr.plan", "schema_version": 1, "adapters": [')
    _c(build, "adapters", tmp_path / "bad.json", want=4)
    doc = json.loads(plan.read_text())
    doc["adapters"][0]["sections"][0]["path"] = "../../../etc/passwd"
    (plan.parent / "escape.json").write_text(json.dumps(doc))
    assert "escapes" in _c(build, "adapters", plan.parent / "escape.json", want=4).stderr
    _c(build, "adapters", want=2)
    assert json.loads(_c(build, "verify", plan).stdout)["ok"] is True
    sec = next((plan.parent / "sections").rglob("*.onnx_adapter"))
    data = bytearray(sec.read_bytes())
    data[len(data) // 2] ^= 1
    sec.write_bytes(bytes(data))
    assert "does not match" in _c(build, "verify", plan, want=8).stderr


def _corpus(plan: Path, out: Path, n: int) -> list[Path]:
    """The malformed-plan corpus: the guard test's seeded mutations plus byte-level damage."""
    import random

    out.mkdir(exist_ok=True)
    doc = json.loads(plan.read_text())
    files = []
    for i, m in enumerate(_mutations(doc, n, seed=5)):
        p = plan.parent / f"mut-{i}.json"
        p.write_text(json.dumps(m))
        files.append(p)
    raw = plan.read_bytes()
    rng = random.Random(3)
    for i in range(n // 2):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            b = b[: rng.randrange(len(b))]
        p = plan.parent / f"bytes-{i}.json"
        p.write_bytes(bytes(b))
        files.append(p)
    (out / "seed.json").write_bytes(raw)
    return files


def _clang() -> str:
    cc = shutil.which("clang")
    if cc is None:
        pytest.fail("clang is not installed (`bash scripts/test.sh` installs it)")
    return cc


def test_malformed_plans_under_asan_and_ubsan(asan_build, plan, tmp_path):
    b = asan_build
    files = _corpus(plan, tmp_path / "seeds", int(os.environ.get("LORAMGR_C_CORPUS", "300")))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    p = subprocess.run(
        [str(b / "lmp_read_any"), str(plan), *map(str, files)], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    opened = int(p.stdout.split()[0])
    assert 1 <= opened < len(files) + 1  # the real plan opens; most mutants are refused with a message


def test_libfuzzer_runs_clean_for_a_bounded_time(fuzz_build, plan, tmp_path):
    b = fuzz_build
    corpus = tmp_path / "corpus"
    _corpus(plan, corpus, 20)
    for i, f in enumerate(sorted(plan.parent.glob("mut-*.json"))[:20]):
        shutil.copy(f, corpus / f"m{i}.json")
    seconds = os.environ.get("LORAMGR_C_FUZZ_SECONDS", "15")
    p = subprocess.run(
        [str(b / "lmp_fuzz"), f"-max_total_time={seconds}", "-rss_limit_mb=1024", str(corpus)],
        capture_output=True,
        text=True,
        timeout=int(seconds) + 120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Done" in p.stderr or "DONE" in p.stderr


def test_valgrind_clean_on_the_normal_path(build, plan):
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed (`bash scripts/test.sh` installs it)")
    for args, want in (
        (["adapters", plan], 0),
        (["sections", plan, "a4"], 0),
        (["encoding", plan, "a4", "out0"], 0),
        (["steps", plan, "a8"], 0),
        (["verify", plan], 0),
        (["encoding", plan, "nope", "x"], 3),
    ):
        p = subprocess.run(
            [
                "valgrind",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=all",
                "-q",
                str(build / "loramgr-plan"),
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == want, (args, p.stderr[-2000:])
    p = subprocess.run(
        ["valgrind", "--error-exitcode=99", "--leak-check=full", "-q", str(build / "lmp_tests"), "queries"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, LMP_TEST_PLAN=str(plan)),
    )
    assert p.returncode == 0, p.stderr[-2000:]


def test_the_shared_library_exports_exactly_the_public_header(build):
    """LMP_API marks every function of include/loramgr_plan.h; the shared library exports those and no
    internal helper (hidden visibility), and the loramgr-plan tool is built on the public header alone."""
    import re

    header = (SRC / "include" / "loramgr_plan.h").read_text()
    public = set(re.findall(r"^LMP_API [^(]*?\b(lmp_\w+)\(", header, re.M))
    declared = set(re.findall(r"^[a-z][^;(]*?\b(lmp_\w+)\(", header, re.M))
    assert public and declared == set(), declared  # no public function without LMP_API
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", str(build / "libloramgr_plan.so")], capture_output=True, text=True
    )
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if " T " in line}
    assert exported == public, (exported - public, public - exported)
    assert '"plan_internal.h"' not in (SRC / "tools" / "loramgr_plan_cli.c").read_text()
