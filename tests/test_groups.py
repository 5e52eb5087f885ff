"""Groups of use cases sharing quantization parameters (QNN LoRA v3 grouped LoRA), on the ort backend
with integer LoRA inputs: one quantization section per group with scales over every member, member
sections with integer codes only, switching inside a group applies one section (Python runtime and
the C driver), logits within int8 tolerance of fp32, the plan's steps, and the qairt refusal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from loramgr.testing import synth
from tests.conftest import invoke

MODS = ("q_proj", "v_proj")
MPS = synth.module_paths(MODS)


@pytest.fixture
def grouped(tmp_path: Path):
    """A synthetic base with int8 LoRA inputs (`base export --quantized-lora 8` structure) and two alpha
    slots; adapters A (r8), B (r4), E (r4); use cases u1 = A + B, u2 = E (group g) and u3 = B."""
    from loramgr.export.onnx_io import quantize_lora_inputs

    W = synth.write_base(tmp_path / "f.onnx", MPS, max_adapters=2)
    m = onnx.load(str(tmp_path / "f.onnx"))
    quantize_lora_inputs(m, [f"{mp}.lora_{x}.weight" for mp in MPS for x in "AB"], 8)
    onnx.save(m, str(tmp_path / "q.onnx"))
    assert invoke("base", "register", tmp_path / "q.onnx", "--name", "q", "--precision", "int8").exit_code == 0
    ads = {}
    for name, r, alpha, seed in (("A", 8, 16, 1), ("B", 4, 4, 2), ("E", 4, 8, 5)):
        t = synth.adapter_tensors(MPS, r, seed=seed)
        synth.write_adapter(tmp_path / name, t, synth.peft_config(r, alpha, list(MODS)))
        assert invoke("register", tmp_path / name, "--name", name).exit_code == 0
        assert invoke("validate", name, "--base", "q").exit_code == 0
        ads[name] = (t, alpha / r)
    for uc, members in (("u1", ("A", "B")), ("u2", ("E",)), ("u3", ("B",))):
        assert invoke("usecase", "create", uc, "--base", "q", *members).exit_code == 0
    return tmp_path, W, ads


def _float_ref(x: np.ndarray, W: dict, ads: dict, names: list[str]) -> list[np.ndarray]:
    outs = [x.astype(np.float64) @ w.astype(np.float64) for w in W.values()]
    for n in names:
        t, scaling = ads[n]
        full = synth.reference(x, W, t, scaling, 1.0)
        outs = [o + (f - x.astype(np.float64) @ w) for o, f, w in zip(outs, full, W.values(), strict=True)]
    return outs


def test_group_commands_and_refusals(grouped):
    tmp, _, _ = grouped
    assert invoke("group", "create", "g", "--base", "q", "u1", "u2").exit_code == 0
    assert invoke("group", "list", "--base", "q", "--json").json == [
        {"name": "g", "base": "q@1", "use_cases": ["u1", "u2"]}
    ]
    assert invoke("usecase", "show", "u1", "--base", "q", "--json").json["group"] == "g"
    r = invoke("group", "create", "h", "--base", "q", "u2", "u3")
    assert r.exit_code == 6 and "u2" in r.stderr and "group g" in r.stderr
    assert invoke("group", "create", "h", "--base", "q", "nope").exit_code == 3
    assert invoke("group", "create", "../h", "--base", "q", "u3").exit_code == 4  # names are checked first
    assert invoke("group", "create", "g", "--base", "q", "u3").exit_code == 6  # exists
    assert invoke("usecase", "show", "u3", "--base", "q", "--json").json["group"] is None
    # group names are per base: the same name on another base is another group
    synth.write_base(tmp / "other.onnx", MPS, max_adapters=2)
    assert invoke("base", "register", tmp / "other.onnx", "--name", "o").exit_code == 0
    assert invoke("validate", "B", "--base", "o").exit_code == 0
    assert invoke("usecase", "create", "w", "--base", "o", "B").exit_code == 0
    assert invoke("group", "create", "g", "--base", "o", "w").exit_code == 0
    assert invoke("group", "list", "--json").json == [
        {"name": "g", "base": "o@1", "use_cases": ["w"]},
        {"name": "g", "base": "q@1", "use_cases": ["u1", "u2"]},
    ]
    assert invoke("group", "remove", "g", "--base", "q", "--json").json["use_cases"] == ["u1", "u2"]
    assert invoke("group", "list", "--base", "q", "--json").json == []


def test_group_sections_share_scales_and_switch_with_one_load(grouped, monkeypatch):
    import onnxruntime as ort

    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession
    from loramgr.sections.backends.ort import read_section

    tmp, W, ads = grouped
    assert invoke("group", "create", "g", "--base", "q", "u1", "u2").exit_code == 0
    b = invoke("build", "--base", "q", "-o", tmp / "out", "--json")
    assert b.exit_code == 0, b.stderr
    assert "group:g" in b.json["rebuilt"]
    # a rebuild reuses every section and names each by its owner: the group's quantization section is
    # the group's (it was once labelled "default": its use-case field is empty)
    again = invoke("build", "--base", "q", "-o", tmp / "out", "--json").json
    assert again["rebuilt"] == [] and sorted(again["reused"]) == sorted(b.json["rebuilt"])
    assert "group:g" in again["reused"] and again["reused"].count("default") == 1
    owners = {(a["kind"], a["owner"]["type"], a["owner"]["name"]) for a in again["artifacts"] if "owner" in a}
    assert ("group_quant_section", "group", "g") in owners and ("default_section", "default", "default") in owners
    arts = {(a["kind"], a.get("use_case") or a.get("group")): a for a in b.json["artifacts"] if "section" in a["kind"]}
    quant = read_section(arts[("group_quant_section", "g")]["path"])[2]
    u1, u2, u3 = (read_section(arts[("use_case_section", u)]["path"])[2] for u in ("u1", "u2", "u3"))
    lora = [f"{mp}.lora_{x}.weight" for mp in MPS for x in "AB"]
    assert sorted(quant) == sorted(f"{n}_scale" for n in lora)  # the scales, once, for the whole group
    for sec in (u1, u2):
        assert not any(k.endswith("_scale") for k in sec) and all(sec[n].dtype == np.int8 for n in lora)
    assert sorted(k for k in u3 if k.endswith("_scale")) == sorted(quant)  # not grouped: its own scales
    # the group's scales are the symmetric per-channel max over every member's weights (own numpy)
    for mp in MPS:
        cols_b = []
        for members in (("A", "B"), ("E",)):
            cols_b.append(
                np.concatenate([(ads[n][0][f"base_model.model.{mp}.lora_B.weight"] * ads[n][1]).T for n in members], 0)
            )
        want = np.abs(np.concatenate(cols_b, axis=0)).max(axis=0) / 127
        np.testing.assert_allclose(quant[f"{mp}.lora_B.weight_scale"], want, rtol=1e-6)
    # the plan: the group, and the quantization section applied first, when the group changes
    assert invoke("plan", "--base", "q").exit_code == 0
    doc = json.loads((tmp / "out" / "plan.json").read_text())
    assert doc["groups"] == [
        {"name": "g", "members": ["u1", "u2"], "sections": [doc["groups"][0]["sections"][0]]}
    ] and doc["groups"][0]["sections"][0]["path"].startswith("sections/groups/g/")
    u1_entry = next(u for u in doc["use_cases"] if u["name"] == "u1")
    ops = [(s["op"], s.get("when")) for s in u1_entry["steps"]]
    assert ops[:3] == [("create_context", None), ("apply_section", "group_changes"), ("apply_section", None)]
    # the runtime: numerics within int8 tolerance of fp32, and one load per switch inside the group
    loads: list[str] = []
    real = ort.LoraAdapter.Load

    def counting(self, path):
        loads.append(Path(path).parent.name)
        return real(self, path)

    monkeypatch.setattr(ort.LoraAdapter, "Load", counting)
    s = LoraSession(Plan.load(tmp / "out" / "plan.json"))
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    for name, members in (("u1", ["A", "B"]), ("u2", ["E"]), ("u3", ["B"]), ("u1", ["A", "B"])):
        s.apply(name)
        got, want = s.run({"x": x}), _float_ref(x, W, ads, members)
        for g_, w_ in zip(got, want, strict=True):
            d, r = g_.ravel().astype(np.float64) - w_.ravel(), w_.ravel()
            cos = float(g_.ravel() @ r / (np.linalg.norm(g_) * np.linalg.norm(r)))
            assert cos >= 0.999 and np.abs(d).max() < 0.05 * np.abs(r).max()
    assert loads == ["g", "u1", "u2", "u3"]  # u2 after u1: its weights only; u1 again: cached
    # the default adapter on shared weights: the twin without the int8 branches (nothing dequantized)
    from loramgr.runtime.weights import SharedWeights

    sw = LoraSession(Plan.load(tmp / "out" / "plan.json"), weights=SharedWeights(s.plan))
    for g_, w_ in zip(sw.run({"x": x}, adapter="default"), _float_ref(x, W, ads, []), strict=True):
        assert np.abs(g_ - w_).max() < 1e-5
    assert sw.twin is not None and len(loads) == 4  # no section was loaded for it


@pytest.mark.slow
def test_c_driver_skips_the_group_section_inside_a_group(grouped, tmp_path):
    from tests.test_c_runtime import _build

    tmp, _, _ = grouped
    assert invoke("group", "create", "g", "--base", "q", "u1", "u2").exit_code == 0
    assert invoke("build", "--base", "q", "-o", tmp / "out").exit_code == 0
    assert invoke("plan", "--base", "q").exit_code == 0
    tool, plan = str(_build(tmp_path / "c-build") / "loramgr-plan"), str(tmp / "out" / "plan.json")

    def switch(*names: str) -> dict:
        p = subprocess.run([tool, "switch", plan, *names], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    first = switch("u1")
    assert first["group"] == "g" and [Path(a["path"]).parent.name for a in first["applied"]] == ["g", "u1"]
    inside = switch("u1", "u2")
    assert [Path(a["path"]).parent.name for a in inside["applied"]] == ["u2"] and inside["alpha"] == [1, 0]
    out_of = switch("u3", "u2")
    assert [Path(a["path"]).parent.name for a in out_of["applied"]] == ["g", "u2"]
    assert [Path(a["path"]).parent.name for a in switch("u2", "u3")["applied"]] == ["u3"]
    p = subprocess.run([tool, "verify", plan], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["files"] >= 9


def test_qairt_refuses_groups_it_cannot_build(grouped, monkeypatch):
    """Quantization-only sections need a generator switch public material does not show (docs/qairt-lora-v3.md,
    an [inf] point): the v3 flow asks, and when the tool writes none it stops with exit 7 naming what is
    missing; it never writes such a file itself."""
    from tests.standin_sdk import make_standin_sdk

    tmp, _, _ = grouped
    sdk = make_standin_sdk(tmp / "qairt-standin-sdk")
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(sdk))
    synth.write_base(tmp / "s.onnx", MPS, max_adapters=2)
    assert invoke("base", "register", tmp / "s.onnx", "--name", "s", "--sdk-version", "2.28.0.241029").exit_code == 0
    for n in ("A", "B"):
        assert invoke("validate", n, "--base", "s").exit_code == 0
    assert invoke("usecase", "create", "w1", "--base", "s", "A", "B").exit_code == 0
    assert invoke("group", "create", "gq", "--base", "s", "w1").exit_code == 0
    r = invoke("build", "--base", "s", "--backend", "qairt", "--lora-version", "3", "-o", tmp / "qo")
    assert r.exit_code == 7 and "gq" in r.stderr and "quantization-only" in r.stderr
    assert not list((tmp / "qo").glob("sections/**/*.bin"))


def test_qairt_groups_when_the_generator_writes_them(grouped, monkeypatch):
    """With a generator that writes quantization-only sections (the stand-in told to play one), the
    v3 flow collects them; the plan, the Genie v3 config (golden, with groups) and the QNN EP files
    (quantization section first, then weights) carry the group."""
    from tests.standin_sdk import make_standin_sdk

    tmp, _, _ = grouped
    sdk = make_standin_sdk(tmp / "qairt-standin-sdk")
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(sdk))
    monkeypatch.setenv("STANDIN_GROUP_SECTIONS", "gq")
    synth.write_base(tmp / "s.onnx", MPS, max_adapters=2)
    assert invoke("base", "register", tmp / "s.onnx", "--name", "s", "--sdk-version", "2.28.0.241029").exit_code == 0
    for n in ("A", "B", "E"):
        assert invoke("validate", n, "--base", "s").exit_code == 0
    assert invoke("usecase", "create", "w1", "--base", "s", "A", "B").exit_code == 0
    assert invoke("usecase", "create", "w2", "--base", "s", "E").exit_code == 0
    assert invoke("group", "create", "gq", "--base", "s", "w1", "w2").exit_code == 0
    out = tmp / "qo"
    r = invoke("build", "--base", "s", "--backend", "qairt", "--lora-version", "3", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    quant = [a for a in r.json["artifacts"] if a["kind"] == "group_quant_section"]
    assert [(a["group"], Path(a["path"]).name) for a in quant] == [("gq", "s_gq.bin")]
    assert Path(quant[0]["path"]).read_bytes() == b"STANDIN-QUANT-SECTION\0gq"  # the tool's bytes, as written
    r = invoke("plan", "--base", "s", "--genie-config", out / "genie.json", "--qnn-ep-configs", out / "ep")
    assert r.exit_code == 0, r.stderr
    genie = json.loads((out / "genie.json").read_text())["lora"]
    assert genie["lora-version"] == 3 and genie["groups"] == [
        {"version": 1, "name": "gq", "members": ["w1", "w2"], "quant-bin-sections": ["sections/groups/gq/s_gq.bin"]}
    ]
    assert [a["name"] for a in genie["adapters"]] == ["A", "B", "E", "w1", "w2"]
    assert next(a for a in genie["adapters"] if a["name"] == "w1")["alphas"] == ["A", "B"]
    ep = out / "ep"
    assert sorted(p.name for p in ep.iterdir() if p.name.startswith("w1")) == ["w1.s.1-quant.txt", "w1.s.2-weights.txt"]
    assert (ep / "w1.s.1-quant.txt").read_text() == f"s;{(out / 'sections/groups/gq/s_gq.bin').resolve()}\n"
    assert (ep / "w1.s.2-weights.txt").read_text() == f"s;{(out / 'sections/usecases/w1/s_w1.bin').resolve()}\n"


def test_mutated_grouped_plans_never_crash(grouped):
    """Seeded mutations of a grouped plan (the guard test's, on the new keys too): `plan-show` and
    `run` refuse them with a distinct exit code, never exit 1."""
    from tests.test_guard import _mutations

    tmp, _, _ = grouped
    assert invoke("group", "create", "g", "--base", "q", "u1", "u2").exit_code == 0
    assert invoke("build", "--base", "q", "-o", tmp / "out").exit_code == 0
    assert invoke("plan", "--base", "q").exit_code == 0
    plan = tmp / "out" / "plan.json"
    doc = json.loads(plan.read_text())
    assert doc["groups"] and any("when" in s for u in doc["use_cases"] for s in u["steps"])
    bad = []
    for i, m in enumerate(_mutations(doc, 300, seed=7)):
        p = plan.with_name(f"mutant-{i}.json")
        p.write_text(json.dumps(m))
        for args in (["plan-show", p, "--use-case", "u1", "--json"], ["plan-show", p, "--json"]):
            r = invoke(*args)
            if r.exit_code == 1 or "Traceback" in (r.stderr or ""):
                bad.append((i, args[-2], r.exit_code, (r.stderr or "")[-200:]))
    assert not bad, bad[:5]


def test_group_of_float_lora_has_no_quantization_section(grouped):
    """On float LoRA inputs a group shares nothing to apply: the plan lists it without sections, and
    Genie and QNN EP configs treat its use cases as plain ones (no crash, no two-step switch)."""
    tmp, _, _ = grouped
    synth.write_base(tmp / "fl.onnx", MPS, max_adapters=2)
    assert invoke("base", "register", tmp / "fl.onnx", "--name", "fl").exit_code == 0
    assert invoke("validate", "A", "--base", "fl").exit_code == 0
    assert invoke("usecase", "create", "u", "--base", "fl", "A").exit_code == 0
    assert invoke("group", "create", "g", "--base", "fl", "u").exit_code == 0
    out = tmp / "fo"
    assert invoke("build", "--base", "fl", "-o", out).exit_code == 0
    r = invoke("plan", "--base", "fl", "--genie-config", out / "g.json", "--qnn-ep-configs", out / "ep")
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "plan.json").read_text())["groups"] == [{"name": "g", "members": ["u"], "sections": []}]
    assert "groups" not in json.loads((out / "g.json").read_text())["lora"]
    assert sorted(p.name for p in (out / "ep").iterdir()) == ["A.fl.txt", "u.fl.txt"]
