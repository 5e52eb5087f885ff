"""Use cases: several adapters active at once on a base with alpha slots. On the synthetic graph
(fast): refusals, sections, per-slot alphas, switching and hot switch against an independent numpy
reference; on a tiny Llama exported with --max-adapters: logits against PEFT with both adapters
active (the issue's acceptance case)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loramgr.testing import synth
from tests.conftest import invoke, store_files

MPS = synth.module_paths(("q_proj", "v_proj"))
ALL = synth.module_paths(("q_proj", "k_proj", "v_proj", "o_proj"))


def _adapter(tmp: Path, name: str, r: int, alpha: float, mods: tuple[str, ...], seed: int) -> dict:
    t = synth.adapter_tensors(synth.module_paths(mods), r, seed=seed)
    synth.write_adapter(tmp / name, t, synth.peft_config(r, alpha, list(mods)))
    assert invoke("register", tmp / name, "--name", name).exit_code == 0
    assert invoke("validate", name, "--base", "slots").exit_code == 0
    return t


@pytest.fixture
def slots(tmp_path: Path):
    """A synthetic base with q/k/v/o of 2 layers, rank 16, two alpha slots; adapters A (r8 q/v),
    B (r4 q/v), C (r4 q/k/v/o), D (r16 q/v), E (r4 q/v)."""
    W = synth.write_base(tmp_path / "slots.onnx", ALL, max_adapters=2)
    assert invoke("base", "register", tmp_path / "slots.onnx", "--name", "slots").exit_code == 0
    ads = {
        "A": (_adapter(tmp_path, "A", 8, 16, ("q_proj", "v_proj"), 1), 16 / 8),
        "B": (_adapter(tmp_path, "B", 4, 4, ("q_proj", "v_proj"), 2), 4 / 4),
        "C": (_adapter(tmp_path, "C", 4, 8, ("q_proj", "k_proj", "v_proj", "o_proj"), 3), 8 / 4),
        "D": (_adapter(tmp_path, "D", 16, 16, ("q_proj", "v_proj"), 4), 16 / 16),
        "E": (_adapter(tmp_path, "E", 4, 8, ("q_proj", "v_proj"), 5), 8 / 4),
    }
    return tmp_path, W, ads


def _ref(x: np.ndarray, W: dict, ads: dict, active: dict[str, float]) -> list[np.ndarray]:
    """sum over active adapters of alpha_i * scaling_i * (x @ A_i.T) @ B_i.T, plus x @ W (own numpy)."""
    outs = [x.astype(np.float64) @ w.astype(np.float64) for w in W.values()]
    for name, alpha in active.items():
        t, scaling = ads[name]
        delta = synth.reference(x, W, t, scaling, alpha)
        base = [x.astype(np.float64) @ w.astype(np.float64) for w in W.values()]
        outs = [o + (d - b) for o, d, b in zip(outs, delta, base, strict=True)]
    return outs


def _close(got: list[np.ndarray], want: list[np.ndarray], tol: float = 1e-5) -> None:
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)) <= tol


def test_refusals_list_every_problem_and_write_nothing(slots, home):
    tmp, _, _ = slots
    r = invoke("usecase", "create", "toobig", "--base", "slots", "A", "D", "--json")
    assert r.exit_code == 5 and "summed_rank_exceeds" in r.stderr and "q_proj" in r.stderr
    detail = json.loads(r.stdout)["details"]
    points = [p["subject"] for p in detail["problems"] if p["code"] == "summed_rank_exceeds"]
    assert len(points) == 4 and "8 (A@1) + 16 (D@1)" in detail["problems"][0]["message"]  # q, v of 2 layers
    r = invoke("usecase", "create", "three", "--base", "slots", "A", "B", "E")
    assert r.exit_code == 5 and "too_many_adapters" in r.stderr
    r = invoke("usecase", "create", "dup", "--base", "slots", "A", "A")
    assert r.exit_code == 5 and "duplicate_adapter" in r.stderr
    assert invoke("usecase", "list", "--json").json == []
    synth.write_base(tmp / "plain.onnx", MPS)
    assert invoke("base", "register", tmp / "plain.onnx", "--name", "plain").exit_code == 0
    assert invoke("validate", "A", "--base", "plain").exit_code == 0
    r = invoke("usecase", "create", "x", "--base", "plain", "A")
    assert r.exit_code == 5 and "no_alpha_slots" in r.stderr and "--max-adapters N" in r.stderr  # the fix, too
    assert invoke("usecase", "create", "ok", "--base", "slots", "A", "C", "--alphas", "1,nan").exit_code == 2
    assert invoke("usecase", "list", "--json").json == [] and "history" not in store_files(home)


def test_usecase_commands(slots):
    r = invoke("usecase", "create", "both", "--base", "slots", "A", "C", "--alphas", "1,0.5", "--json")
    assert r.exit_code == 0 and r.json["adapters"] == ["A@1", "C@1"] and r.json["alphas"] == [1.0, 0.5]
    assert invoke("usecase", "create", "both", "--base", "slots", "B").exit_code == 6  # unique per base
    assert [u["name"] for u in invoke("usecase", "list", "--base", "slots", "--json").json] == ["both"]
    assert invoke("usecase", "show", "both", "--base", "slots", "--json").json["slots"][1]["adapter"] == "C@1"
    assert invoke("usecase", "show", "nope", "--base", "slots").exit_code == 3
    assert invoke("usecase", "remove", "both", "--base", "slots").exit_code == 0
    assert invoke("usecase", "list", "--json").json == []
    events = [e["action"] for e in invoke("history", "A", "--json").json]
    assert "register" in events  # adapter history is unaffected


def _plan(tmp: Path) -> Path:
    r = invoke("build", "--base", "slots", "-o", tmp / "out", "--json")
    assert r.exit_code == 0, r.stderr
    assert invoke("plan", "--base", "slots").exit_code == 0
    return tmp / "out" / "plan.json"


def test_use_case_sections_alphas_switching_against_numpy(slots):
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    tmp, W, ads = slots
    assert invoke("usecase", "create", "both", "--base", "slots", "A", "C").exit_code == 0
    plan = Plan.load(_plan(tmp))
    uc = plan.use_case("both")
    assert uc.adapters == {"A@1": 0, "C@1": 1} and uc.alphas == [1.0, 1.0] and plan.use_cases == ("both",)
    assert uc.sections("slots")[0].graphs == ("slots",)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    s = LoraSession(plan)
    s.apply("both")
    _close(s.run({"x": x}), _ref(x, W, ads, {"A": 1.0, "C": 1.0}))
    s.set_alpha(0.0, adapter="C")
    _close(s.run({"x": x}), _ref(x, W, ads, {"A": 1.0}))  # alphas (1, 0) = A alone
    s.set_alpha(0.5, adapter="A")
    s.set_alpha(1.0, adapter="C")
    _close(s.run({"x": x}), _ref(x, W, ads, {"A": 0.5, "C": 1.0}))  # A halved
    for name, active in (("B", {"B": 1.0}), ("both", {"A": 1.0, "C": 1.0}), ("default", {})):
        s.apply(name)
        fresh = LoraSession(plan)
        fresh.apply(name)
        got = s.run({"x": x})
        _close(got, fresh.run({"x": x}), 0)
        _close(got, _ref(x, W, ads, active))
    # every alpha of the applied use case at 0: the LoRA-free twin (shared weights), exactly the base
    from loramgr.runtime.weights import SharedWeights

    sw = LoraSession(plan, weights=SharedWeights(plan))
    sw.apply("both")
    sw.set_alpha(0.0)
    _close(sw.run({"x": x}), _ref(x, W, ads, {}))
    assert sw.twin is not None and not any("lora" in i.name for i in sw.twin.session.get_inputs())
    sw.set_alpha(1.0, adapter="A")
    _close(sw.run({"x": x}), _ref(x, W, ads, {"A": 1.0}))
    r = invoke("verify", "--plan", tmp / "out" / "plan.json", "--mode", "sections", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert {row["adapter"] for row in r.json["adapters"]} >= {"both", "A@1"}


def test_plan_and_plan_show_name_use_cases(slots):
    tmp, _, _ = slots
    assert invoke("usecase", "create", "both", "--base", "slots", "A", "C", "--alphas", "1,0.5").exit_code == 0
    assert invoke("build", "--base", "slots", "-o", tmp / "out").exit_code == 0
    r = invoke("plan", "--base", "slots", "--json")
    assert r.json["use_cases"] == ["both"] and "use cases both" in invoke("plan", "--base", "slots").stdout
    plan = tmp / "out" / "plan.json"
    shown = invoke("plan-show", plan, "--use-case", "both", "--json").json
    assert shown["slots"] == {"A@1": 0, "C@1": 1} and shown["alphas"] == [1.0, 0.5]
    assert [s["op"] for s in shown["steps"]][-2:] == ["set_alpha", "execute"]
    assert shown["steps"][-2]["values"] == [1.0, 0.5]
    assert invoke("plan-show", plan, "--json").json["use_cases"] == ["both"]
    assert "slot 1 C@1 (alpha 0.5)" in invoke("plan-show", plan, "--use-case", "both").stdout
    assert invoke("plan-show", plan, "--use-case", "A").exit_code == 3  # an adapter is not a use case
    assert invoke("plan-show", plan, "--use-case", "both", "--adapter", "A").exit_code == 2


def test_hot_switch_selects_without_loading_a_section(slots, monkeypatch):
    import onnxruntime as ort

    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    tmp, W, ads = slots
    synth.write_base(tmp / "three.onnx", ALL, max_adapters=3)
    assert invoke("base", "register", tmp / "three.onnx", "--name", "three").exit_code == 0
    for n in ("B", "C", "E"):
        assert invoke("validate", n, "--base", "three").exit_code == 0
    assert invoke("usecase", "create", "all", "--base", "three", "--hot", "B", "C", "E").exit_code == 0
    assert invoke("build", "--base", "three", "-o", tmp / "o3").exit_code == 0
    assert invoke("plan", "--base", "three").exit_code == 0
    plan = Plan.load(tmp / "o3" / "plan.json")
    assert plan.use_case("all").hot
    # the plan's switch to one adapter of a hot use case: the alpha vector alone, no section
    assert plan.use_case("all").doc["switch_steps"] == {
        ref: [{"op": "set_alpha", "tensor": "lora_alpha", "values": one_hot}, {"op": "execute"}]
        for ref, one_hot in (("B@1", [1.0, 0.0, 0.0]), ("C@1", [0.0, 1.0, 0.0]), ("E@1", [0.0, 0.0, 1.0]))
    }
    loads = []
    real = ort.LoraAdapter.Load

    def counting(self, path):  # count every section ORT loads
        loads.append(path)
        return real(self, path)

    monkeypatch.setattr(ort.LoraAdapter, "Load", counting)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    s = LoraSession(plan)
    s.apply("all")
    assert len(loads) == 1
    for name in ("B", "C", "E", "C"):
        s.select(name)
        _close(s.run({"x": x}), _ref(x, W, ads, {name: 1.0}))
    assert len(loads) == 1  # selecting is a write of the alpha vector, never a section load
    with pytest.raises(KeyError):
        s.select("A")


def test_version_1_plans_still_load_and_run(slots):
    """What the previous release wrote: schema 1, no use_cases, scalar alpha block without slots."""
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    tmp, _, ads = slots
    W_plain = synth.write_base(tmp / "plain.onnx", MPS)
    assert invoke("base", "register", tmp / "plain.onnx", "--name", "plain").exit_code == 0
    assert invoke("validate", "A", "--base", "plain").exit_code == 0
    assert invoke("build", "--base", "plain", "A", "-o", tmp / "p").exit_code == 0
    assert invoke("plan", "--base", "plain").exit_code == 0
    doc = json.loads((tmp / "p" / "plan.json").read_text())
    assert doc["schema_version"] == 2
    doc["schema_version"] = 1
    del doc["use_cases"]
    del doc["alpha"]["slots"]
    (tmp / "p" / "v1.json").write_text(json.dumps(doc))
    v1 = Plan.load(tmp / "p" / "v1.json")
    assert v1.use_cases == () and v1.alpha_slots is None
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    s = LoraSession(v1)
    s.apply("A")
    _close(s.run({"x": x}), _ref(x, W_plain, ads, {"A": 1.0}))
    assert invoke("plan-show", tmp / "p" / "v1.json", "--adapter", "A", "--json").exit_code == 0


def test_incremental_build_reuses_use_case_sections(slots):
    tmp, _, _ = slots
    assert invoke("usecase", "create", "both", "--base", "slots", "A", "C").exit_code == 0
    first = invoke("build", "--base", "slots", "-o", tmp / "out", "--json").json
    assert "usecase:both" in first["rebuilt"]
    again = invoke("build", "--base", "slots", "-o", tmp / "out", "--json").json
    assert again["rebuilt"] == [] and "usecase:both" in again["reused"]
    kinds = {a["kind"] for a in again["artifacts"] if a.get("use_case") == "both"}
    assert kinds == {"use_case_section"}


@pytest.mark.slow
def test_use_case_matches_peft_with_both_adapters_active(tmp_path):
    """The issue's case: {A rank 8 on q/v, C rank 4 on q/k/v/o} on a tiny Llama exported with R 16 and
    N 2: logits against PEFT with both adapters active <= 1e-4; alphas (1, 0) = A alone; (0.5, 1) =
    PEFT with A's scaling halved; `run --use-case` and `verify` through the CLI."""
    import torch
    from peft import PeftModel

    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession
    from tests.hf_models import peft_adapter, tiny_llama

    tiny_llama().save_pretrained(tmp_path / "hf")
    peft_adapter(tiny_llama(), tmp_path / "A", seed=1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    peft_adapter(
        tiny_llama(), tmp_path / "C", seed=2, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    r = invoke(
        "base",
        "export",
        tmp_path / "hf",
        "--name",
        "llama",
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj",
        "--max-rank",
        "16",
        "--max-adapters",
        "2",
        "--graphs",
        "prefill=8,decode=1",
        "--context-len",
        "24",
        "-o",
        tmp_path / "onnx",
    )
    assert r.exit_code == 0, r.stderr
    for n in ("A", "C"):
        assert invoke("register", tmp_path / n, "--name", n).exit_code == 0
        assert invoke("validate", n, "--base", "llama").exit_code == 0
    assert invoke("usecase", "create", "both", "--base", "llama", "A", "C").exit_code == 0
    assert invoke("build", "--base", "llama", "--share-adapters", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "llama").exit_code == 0
    plan = Plan.load(tmp_path / "out" / "plan.json")
    ids = np.array([[3, 17, 42, 5, 99, 1, 64, 7]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(8, dtype=np.int64)[None]}

    def peft(active: list[str], scale: dict[str, float] | None = None) -> np.ndarray:
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        pm = PeftModel.from_pretrained(m, tmp_path / "A", adapter_name="A")
        pm.load_adapter(tmp_path / "C", adapter_name="C")
        pm.base_model.set_adapter(active)
        for mod in pm.modules():
            if isinstance(getattr(mod, "scaling", None), dict):
                for k, v in (scale or {}).items():
                    if k in mod.scaling:
                        mod.scaling[k] *= v
        with torch.no_grad():
            return pm(torch.tensor(ids)).logits.numpy()

    s = LoraSession(plan, graph="prefill")
    s.apply("both")
    logits = s.run(feeds, ["logits"])[0]
    assert np.abs(logits - peft(["A", "C"])).max() <= 1e-4
    s.set_alpha(0.0, adapter="C")
    assert np.abs(s.run(feeds, ["logits"])[0] - peft(["A"])).max() <= 1e-4
    s.set_alpha(0.5, adapter="A")
    s.set_alpha(1.0, adapter="C")
    assert np.abs(s.run(feeds, ["logits"])[0] - peft(["A", "C"], {"A": 0.5})).max() <= 1e-4
    r = invoke(
        "run",
        "--plan",
        tmp_path / "out" / "plan.json",
        "--use-case",
        "both",
        "--alpha",
        "A=0.5,C=1",
        "--input-ids",
        "3,17,42",
        "--steps",
        "4",
        "--json",
    )
    assert r.exit_code == 0 and len(r.json["tokens"]) == 4, r.stderr
    assert (
        invoke(
            "run",
            "--plan",
            tmp_path / "out" / "plan.json",
            "--use-case",
            "both",
            "--alpha",
            "Z=1",
            "--input-ids",
            "3",
            "--steps",
            "1",
        ).exit_code
        == 3
    )
    v = invoke("verify", "--plan", tmp_path / "out" / "plan.json", "--hf-dir", tmp_path / "hf", "--json")
    assert v.exit_code == 0, v.stdout + v.stderr
    assert {row["adapter"] for row in v.json["adapters"]} == {"A@1", "C@1", "both"}
    assert all(row["max_abs_diff"] <= 1e-4 for row in v.json["adapters"])
