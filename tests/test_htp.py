"""Qualcomm's real HTP backend (onnxruntime-qnn: the QNN libraries and ONNX Runtime's plugin EP; on x86
Qualcomm's simulator of the SoC). No stand-in: every compile and run below is the real QNN backend.

Per family (Llama, Qwen3, Gemma 3, tiny and random): `base export` -> two PEFT adapters and a use case
-> `build --backend qnn-ep --target sm8750` -> the compiled graphs hold EPContext nodes only (wholly on
HTP), `verify --device htp` holds every adapter and the use case to PEFT fp32 at the SoC's fp16
numerics and, in the simulator's fp32 mode, at 1e-4; greedy tokens in fp32 mode equal HF's; adapters
switch on one session; a new adapter does not recompile the context. Then the refusals."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loramgr.export.tiny import FAMILIES, peft_adapter, tiny_family
from tests.conftest import invoke
from tests.test_export import hf_greedy, same_greedy

pytestmark = pytest.mark.slow
S, CTX = 6, 24
PROMPT = [3, 17, 42, 5, 99]
TARGET = "sm8750"


@pytest.fixture(scope="session", autouse=True)
def _qnn_installed():
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        if platform.machine() in ("x86_64", "AMD64"):
            pytest.fail("onnxruntime-qnn is not installed (`bash scripts/test.sh` installs the [qnn] extra)")
        pytest.skip("onnxruntime-qnn has no wheel for this platform")


def cli(*args) -> str:
    """The CLI in a process of its own (stdout), with this test's LORAMGR_HOME."""
    p = subprocess.run([sys.executable, "-m", "loramgr", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3"])
def built(request, tmp_path_factory):
    family = request.param
    tmp = tmp_path_factory.mktemp(f"htp-{family}")
    home = tmp / "home"
    os.environ["LORAMGR_HOME"] = str(home)  # module scope: before the per-test home fixture
    targets = list(FAMILIES[family][3])
    tiny_family(family).save_pretrained(tmp / "hf")
    for i in range(3):
        peft_adapter(
            tiny_family(family), tmp / f"ad{i}", seed=11 + i, r=4 + 2 * i, lora_alpha=8, target_modules=targets
        )
    ok("base", "export", tmp / "hf", "--name", "b", "--target-modules", ",".join(targets), "--max-rank", "16",
       "--max-adapters", "2", "--graphs", f"prefill={S},decode=1", "--context-len", str(CTX),
       "-o", tmp / "onnx")  # fmt: skip
    for i in (0, 1):
        ok("register", tmp / f"ad{i}", "--name", f"ad{i}")
        ok("validate", f"ad{i}", "--base", "b")
    ok("usecase", "create", "both", "ad0", "ad1", "--base", "b", "--alphas", "1,0.5")
    first = ok("build", "--base", "b", "--backend", "qnn-ep", "--target", TARGET, "-o", tmp / "out", "--json").json
    ok("plan", "--base", "b")
    os.environ.pop("LORAMGR_HOME", None)
    return family, tmp, first


@pytest.fixture
def b(built, monkeypatch):
    """The module's build, with its registry as this test's LORAMGR_HOME."""
    monkeypatch.setenv("LORAMGR_HOME", str(built[1] / "home"))
    return built


def test_compiled_graphs_are_wholly_on_htp_and_listed_in_the_plan(b):
    import onnx

    family, tmp, first = b
    plan = json.loads((tmp / "out" / "plan.json").read_text())
    t = plan["targets"][TARGET]
    assert (t["soc_model"], t["htp_arch"], t["precision"]) == (69, 79, "fp16")
    assert t["qnn_version"].startswith("2.") and first["backend"] == "qnn-ep"
    assert set(t["graphs"]) == {"prefill", "decode"}
    for g in t["graphs"].values():
        for path in (g["path"], g["unshared_path"]):
            m = onnx.load(str(tmp / "out" / path), load_external_data=False)
            assert {n.op_type for n in m.graph.node} == {"EPContext"}, path  # nothing left for the CPU
            version = next(a.s for a in m.graph.node[0].attribute if a.name == "ep_sdk_version").decode()
            assert version.lstrip("v") == t["qnn_version"]  # the context says which QNN made it
            lora = [i.name for i in m.graph.input if ".lora_" in i.name]
            assert lora and {i.name for i in m.graph.initializer} >= set(lora)  # declared, optional
        assert g["files"] and g["unshared_files"] and g["files"] != g["unshared_files"]
    # prefill and decode share one weight-shared context: one .bin, smaller than the two alone
    shared = {f["path"]: f["size"] for g in t["graphs"].values() for f in g["files"]}
    alone = {f["path"]: f["size"] for g in t["graphs"].values() for f in g["unshared_files"]}
    assert len(shared) == 1 and len(alone) == 2 and sum(shared.values()) < sum(alone.values())
    # every section entry points at an .onnx_adapter with its owner
    kinds = {(s["kind"], s["owner"]["type"]) for e in plan["adapters"] + plan["use_cases"] for s in e["sections"]}
    assert kinds == {("section", "adapter"), ("use_case_section", "use_case")}


def test_verify_on_htp_against_peft(b):
    """Every adapter and the use case, at the SoC's fp16 numerics (relative error and top-1) and in
    the simulator's fp32 mode (1e-4, as the CPU is held to)."""
    family, tmp, _ = b
    plan = tmp / "out" / "plan.json"
    soc = ok("verify", "--plan", plan, "--device", "htp", "--target", TARGET, "--json").json
    assert soc["mode"] == "peft" and {r["adapter"] for r in soc["adapters"]} == {"ad0@1", "ad1@1", "both"}
    for r in soc["adapters"]:
        assert r["ok"] and r["rel_error"] <= 3e-2 and r["top1_agreement"] >= 0.8, r
        assert r["rel_error"] > 0  # fp16 on the SoC: not bit-equal to fp32 (this is not the CPU)
    # the fp32 mode in a process of its own: the backend keeps a SoC's fp16 numerics for the process
    fp32 = json.loads(cli("verify", "--plan", plan, "--device", "htp", "--target", TARGET, "--htp-fp32", "--json"))
    assert all(r["ok"] and r["max_abs_diff"] <= 1e-4 for r in fp32["adapters"]), fp32
    r = invoke("verify", "--plan", plan, "--device", "htp", "--target", TARGET, "--htp-fp32")
    assert r.exit_code == 2 and "process of its own" in r.stderr  # never fp16 results under an fp32 name


def test_greedy_tokens_on_htp_fp32_equal_hf(b):
    from peft import PeftModel

    family, tmp, _ = b
    r = json.loads(cli("run", "--plan", tmp / "out" / "plan.json", "--adapter", "ad0", "--input-ids",
                       ",".join(map(str, PROMPT)), "--steps", "10", "--device", "htp", "--target", TARGET,
                       "--htp-fp32", "--json"))  # fmt: skip
    model = PeftModel.from_pretrained(tiny_family(family), str(tmp / "ad0")).eval()
    ref, rows = hf_greedy(model, PROMPT, 10)
    assert same_greedy(r["tokens"], ref, rows), (r["tokens"], ref)
    assert len(set(ref)) > 1  # the tokens vary: a stuck stream would prove little
    soc = ok("run", "--plan", tmp / "out" / "plan.json", "--adapter", "ad0", "--input-ids", ",".join(map(str, PROMPT)),
             "--steps", "10", "--device", "htp", "--target", TARGET, "--json").json  # fmt: skip
    assert soc["tokens"][0] == ref[0]  # the SoC's fp16 numerics agree at least on the first token


def test_adapters_switch_on_one_htp_session(b):
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import Htp, LoraSession

    family, tmp, _ = b
    plan = Plan.load(tmp / "out" / "plan.json")
    htp = LoraSession(plan, "prefill", htp=Htp(TARGET))
    cpu = LoraSession(plan, "prefill")
    feeds = {
        "input_ids": np.array([PROMPT + [7]], np.int64),
        "attention_mask": np.ones((1, S), np.int64),
        "position_ids": np.arange(S, dtype=np.int64)[None],
    }
    got = {}
    for name in ("ad0", "ad1", "both", "ad0", "default"):
        htp.apply(name)
        cpu.apply(name)
        h, c = htp.run(feeds)[0].astype(np.float64), cpu.run(feeds)[0].astype(np.float64)
        cos = float((h * c).sum() / (np.linalg.norm(h) * np.linalg.norm(c)))
        assert cos > 0.999 and np.abs(h - c).max() / np.abs(c).max() < 3e-2, (name, cos)
        got.setdefault(name, []).append(h)
    np.testing.assert_array_equal(got["ad0"][0], got["ad0"][1])  # back to ad0: the same logits
    assert np.abs(got["ad0"][0] - got["ad1"][0]).max() > 1e-3  # the sections are applied
    assert np.abs(got["default"][0] - got["ad0"][0]).max() > 1e-3


def test_a_new_adapter_never_recompiles_the_context(b):
    family, tmp, first = b
    out = tmp / "out"
    ctx = sorted(p for p in (out / "targets").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ctx}
    ok("register", tmp / "ad2", "--name", "ad2")
    ok("validate", "ad2", "--base", "b")
    again = ok("build", "--base", "b", "--backend", "qnn-ep", "--target", TARGET, "-o", out, "--json").json
    assert again["rebuilt"] == ["ad2@1"] and "default" in again["reused"]  # the contexts are the default's
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ctx} == before
    ok("plan", "--base", "b")
    r = ok("verify", "--plan", out / "plan.json", "--device", "htp", "--target", TARGET, "--adapter", "ad2", "--json")
    assert r.json["ok"]


@pytest.mark.parametrize("built", ["llama"], indirect=True)  # the refusals are the same for every family
def test_refusals_name_the_cause(b, tmp_path, monkeypatch):
    """A graph HTP cannot place is refused at build with exit 2 naming op, node and reason (an Erf in an
    exported graph; a graph with dynamic shapes), nothing compiled left; an unknown SoC, a missing
    --target, --target without qnn-ep, and a plan without the target are refused before any work;
    without the package, the error names the pip install."""
    import onnx
    from onnx import helper

    from loramgr.testing import synth

    family, built_tmp, _ = b
    monkeypatch.setenv("LORAMGR_HOME", str(tmp_path / "home"))
    m = onnx.load(str(built_tmp / "onnx" / "decode.onnx"))  # the weights inline: a small single file
    logits = next(o for o in m.graph.output if o.name == "logits")
    m.graph.node.append(helper.make_node("Erf", ["logits"], ["logits_erf"], name="the_erf"))
    logits.name = "logits_erf"
    onnx.save(m, str(tmp_path / "erf.onnx"))
    r = invoke("base", "register", tmp_path / "erf.onnx", "--name", "e", "--htp-target", "sm8750")
    assert r.exit_code == 2 and "op Erf (node the_erf)" in r.stderr, r.stderr  # third-party ONNX, checked first
    assert invoke("list", "bases", "--json").json == []  # nothing registered
    ok("base", "register", built_tmp / "onnx" / "decode.onnx", "--name", "clean", "--htp-target", "sm8750,sc8380xp")
    ok("base", "register", tmp_path / "erf.onnx", "--name", "e")
    ok("register", built_tmp / "ad0", "--name", "a")
    ok("validate", "a", "--base", "e")
    r = invoke("build", "--base", "e", "--backend", "qnn-ep", "--target", "sm8750", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "op Erf (node the_erf)" in r.stderr and "not supported" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 600 and not list((tmp_path / "out").rglob("*_ctx.onnx"))

    mps = synth.module_paths()
    synth.write_base(tmp_path / "dyn.onnx", mps)  # symbolic batch and sequence dimensions
    ok("base", "register", tmp_path / "dyn.onnx", "--name", "d")
    ad = synth.write_adapter(tmp_path / "sa", synth.adapter_tensors(mps, 8), synth.peft_config(8, 16, ["q_proj"]))
    ok("register", ad, "--name", "s")
    ok("validate", "s", "--base", "d")
    r = invoke("build", "--base", "d", "--backend", "qnn-ep", "--target", "sm8750", "-o", tmp_path / "out2")
    assert r.exit_code == 2 and "static shapes" in r.stderr, r.stderr

    r = invoke("build", "--base", "e", "--backend", "qnn-ep", "--target", "sm9999", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "target list" in r.stderr
    assert invoke("build", "--base", "e", "--backend", "qnn-ep", "-o", tmp_path / "out").exit_code == 2
    assert invoke("build", "--base", "e", "--target", "sm8750", "-o", tmp_path / "out").exit_code == 2
    monkeypatch.setenv("LORAMGR_HOME", str(built_tmp / "home"))
    r = invoke("verify", "--plan", built_tmp / "out" / "plan.json", "--device", "htp", "--target", "sm8650")
    assert r.exit_code == 3 and "sm8750" in r.stderr  # names the targets the plan has
    assert (
        invoke("run", "--plan", built_tmp / "out" / "plan.json", "--input-ids", "1", "--device", "htp").exit_code == 2
    )

    code = (
        "import sys; sys.modules['onnxruntime_qnn'] = None\n"
        "from loramgr.cli import main; sys.argv = ['loramgr', 'build', '--base', 'e', '--backend', 'qnn-ep',"
        f" '--target', 'sm8750', '-o', {str(tmp_path / 'o2')!r}]; main()"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=os.environ | {"LORAMGR_HOME": str(tmp_path / "home")})  # fmt: skip
    assert p.returncode == 2 and "pip install 'loramgr[qnn]'" in p.stderr, p.stderr


def test_target_list_and_every_target_is_known_to_qnn(tmp_path):
    """`target list --json` rows; every soc_model is one the real QNN backend accepts (it refuses an
    unknown one: the device cannot be created)."""
    import onnx
    from onnx import TensorProto, helper

    from loramgr.errors import ExternalToolError
    from loramgr.runtime import qnn
    from loramgr.targets import COMPILED_ARCH, TARGETS, find_target

    rows = ok("target", "list", "--json").json
    by = {r["name"]: r for r in rows}
    assert (by["sm8750"]["soc_model"], by["sc8380xp"]["soc_model"], by["sm8650"]["soc_model"]) == (69, 60, 57)
    assert all(isinstance(r["soc_model"], int) and isinstance(r["aliases"], list) for r in rows)
    assert find_target("Snapdragon 8 Elite").name == "sm8750" and find_target("X Elite").name == "sc8380xp"
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )  # fmt: skip
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "add.onnx"))
    for t in TARGETS:
        qnn.compile_model(tmp_path / "add.onnx", tmp_path / f"{t.name}_ctx.onnx", t.soc_model)
        binary = (tmp_path / f"{t.name}_ctx_qnn.bin").read_bytes()
        arch = COMPILED_ARCH.get(t.name, t.htp_arch)  # the compiled context names the SoC and architecture
        assert f"soc_type={t.name.upper()};arch={arch}".encode() in binary, t
    with pytest.raises(ExternalToolError):  # the QNN backend's own refusal of an unknown SoC
        qnn.compile_model(tmp_path / "add.onnx", tmp_path / "bad_ctx.onnx", 9999)


def test_genie_parser_checks_the_lora_blocks_loramgr_writes():
    """Genie's own parser (the wheel's libGenie.so): the block `plan --genie-config` writes (the golden
    v2 block, and the same as lora-version 3 with a group) is accepted inside a dialog config with
    context binaries; what Genie refuses it refuses with -8 and says why, and a refused block that
    loramgr wrote would be a bug (exit 1). `plan --genie-config` runs this check itself (test_qairt,
    test_groups write v2, v3 and grouped configs through it)."""
    import copy

    from loramgr.deploy.genie import check_block, check_with_genie, dialog_config
    from loramgr.errors import InternalError
    from loramgr.runtime import qnn

    assert qnn.genie_version().startswith("1.")
    block = json.loads((Path(__file__).parent / "golden" / "genie_lora.json").read_text())["lora"]
    check_block(block)
    assert check_with_genie(block, ["ctx_0.bin"]) is True
    v3 = copy.deepcopy(block) | {"lora-version": 3}
    names = [a["name"] for a in v3["adapters"]]
    v3["groups"] = [{"version": 1, "name": "g", "members": names, "quant-bin-sections": ["g.bin"]}]
    check_block(v3)
    assert check_with_genie(v3, ["ctx_0.bin", "ctx_1.bin"]) is True
    for bad in (
        block | {"colour": "red"},
        block | {"lora-version": 7},
        block | {"adapters": [{k: v for k, v in block["adapters"][0].items() if k != "name"}]},
    ):
        status, said = qnn.genie_parse(json.dumps(dialog_config(bad, ["ctx_0.bin"])))
        assert status == -8 and said, (bad, status)
        with pytest.raises(InternalError):
            check_with_genie(bad, ["ctx_0.bin"])


@pytest.mark.parametrize("built", ["qwen3"], indirect=True)
def test_the_c_library_reads_the_targets_as_python_does(b, tmp_path):
    """The C library's lmp_targets / lmp_target_graph (through its loramgr-plan tool, under valgrind)
    give every target's compiled graphs and context files as the Python runtime resolves them."""
    from loramgr.runtime import Plan, PlanFormatError
    from tests.test_c_runtime import _build

    family, tmp, _ = b
    tool = _build(tmp_path / "c") / "loramgr-plan"
    plan_path = tmp / "out" / "plan.json"
    p = subprocess.run(
        ["valgrind", "-q", "--leak-check=full", "--error-exitcode=9", str(tool), "targets", str(plan_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)["targets"]
    py = Plan.load(plan_path)
    assert [t["name"] for t in got] == list(py.targets) == [TARGET]
    t = got[0]
    assert (t["soc_model"], t["htp_arch"], t["qnn_version"]) == (69, 79, py.target(TARGET)["qnn_version"])
    for g, c in t["graphs"].items():
        assert c["path"] == str(py.target_graph_file(TARGET, g, shared=True))
        assert c["unshared_path"] == str(py.target_graph_file(TARGET, g, shared=False))
        want = py.target(TARGET)["graphs"][g]
        assert c["files"] == [str(py.root / f["path"]) for f in want["files"]]
        assert c["unshared_files"] == [str(py.root / f["path"]) for f in want["unshared_files"]]
    # a target path leaving the plan's directory is refused by both readers
    doc = json.loads(plan_path.read_text())
    doc["targets"][TARGET]["graphs"]["decode"]["files"][0]["path"] = "../../../etc/passwd"
    bad = plan_path.with_name("bad-target.json")
    bad.write_text(json.dumps(doc))
    assert subprocess.run([str(tool), "targets", str(bad)], capture_output=True).returncode == 4
    with pytest.raises(PlanFormatError, match="escapes"):
        Plan.load(bad)


@pytest.mark.parametrize("built", ["llama"], indirect=True)
@pytest.mark.parametrize("scheme", ["qdq-u16u8", "qdq-u8u8"])
def test_quantized_target_covers_its_adapters_and_refuses_one_that_clips(b, scheme, tmp_path):
    """`--precision qdq-u16u8|u8u8`: the base quantized for HTP (ONNX Runtime's QNN quantization),
    calibrated over every adapter and the use case; wholly on HTP; every adapter and the use case
    verified against PEFT fp32 by cosine; the LoRA inputs' encodings in the plan cover each adapter's
    own tensors. A later adapter whose LoRA weights fall outside them is refused for the target
    (exit 5, naming tensor and range) instead of being clipped."""
    import onnx

    from loramgr.lora.inputs import section_inputs
    from loramgr.registry.api import Registry
    from loramgr.sections.backends import qdq

    family, tmp, _ = b
    out = tmp / f"out-{scheme}"
    r = ok(
        "build", "--base", "b", "--backend", "qnn-ep", "--target", TARGET, "--precision", scheme, "-o", out, "--json"
    )
    assert {a["kind"] for a in r.json["artifacts"]} >= {"ep_context_model", "ep_encodings"}
    ok("plan", "--base", "b", "-o", out / "plan.json")
    plan = json.loads((out / "plan.json").read_text())
    t = plan["targets"][TARGET]
    assert t["precision"] == scheme and t["encodings"]["path"].endswith("qdq_encodings.json")
    for g in t["graphs"].values():
        m = onnx.load(str(out / g["unshared_path"]), load_external_data=False)
        assert {n.op_type for n in m.graph.node} == {"EPContext"}
    v = ok("verify", "--plan", out / "plan.json", "--device", "htp", "--target", TARGET, "--json").json
    want = {"qdq-u16u8": 0.99, "qdq-u8u8": 0.98}[scheme]
    assert {r["adapter"] for r in v["adapters"]} >= {"ad0@1", "ad1@1", "both"}  # (and ad2, once registered)
    assert all(r["ok"] and r["cosine"] >= want for r in v["adapters"]), v
    # the encodings hold every registered adapter's own tensors (an independent min/max over them)
    enc = qdq.read_encodings(out / t["encodings"]["path"])
    reg = Registry()
    base = reg.base("b")
    for ref in ("ad0@1", "ad1@1"):
        params = section_inputs(reg.adapter(ref), base)
        for per in enc.values():
            for name, e in per.items():
                if name in params:
                    assert (
                        e.rmin - e.scale <= float(params[name].min()) and float(params[name].max()) <= e.rmax + e.scale
                    )
    # an adapter registered later, ten times stronger than any calibrated one, is refused for the target
    seed = 40 + list(qdq.SCHEMES).index(scheme)  # other bytes per scheme: registering is content-addressed
    peft_adapter(
        tiny_family(family), tmp_path / "big", seed=seed, r=8, lora_alpha=400, target_modules=["q_proj", "v_proj"]
    )
    ok("register", tmp_path / "big", "--name", f"big-{scheme}")
    ok("validate", f"big-{scheme}", "--base", "b")
    r = invoke("build", "--base", "b", "--backend", "qnn-ep", "--target", TARGET, "--precision", scheme, "-o", out)
    assert r.exit_code == 5 and ".lora_B.weight [" in r.stderr and "outside" in r.stderr, r.stderr
    assert not list(out.rglob(f"*big-{scheme}*"))  # nothing of it written
    ok("retire", f"big-{scheme}")
