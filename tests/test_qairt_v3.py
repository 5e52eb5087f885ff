"""qairt backend, QNN LoRA v3 flow (`build --backend qairt --lora-version 3`), by contract against the
STAND-IN SDK (tests/standin_sdk.py, with its qairt-lora-model-creator): exact argv and cwd of every
tool per mode, the creator's YAML and adapter JSON parsed and checked against the base model, the
models given to the creator run on ONNX Runtime against an independent numpy reference, sections
collected, refusals before any tool runs, the plan, the Genie v3 config and the QNN EP files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from safetensors.numpy import load_file

from loramgr.testing import synth
from tests.conftest import invoke
from tests.standin_sdk import calls, make_standin_sdk

SDK_VERSION = "2.39.0.250101"
ALL = ("q_proj", "k_proj", "v_proj", "o_proj")
GRAPHS = ("prefill", "decode")


@pytest.fixture
def v3(tmp_path, monkeypatch):
    """A 2-graph synthetic base with two alpha slots (q/k/v/o, rank 16), adapters A (r8 q/v, alpha 16)
    and C (r4 q/k/v/o, alpha 8), the use case `both` = A + C with alphas 1 and 0.5, a stand-in SDK."""
    sdk = make_standin_sdk(tmp_path / "qairt-standin-sdk", "2.39.0", "250101")
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(sdk))
    W = {}
    for g in GRAPHS:
        W = synth.write_base(tmp_path / f"{g}.onnx", synth.module_paths(ALL), max_adapters=2)
    args = [a for g in GRAPHS for a in ("--graph", f"{g}={tmp_path / f'{g}.onnx'}")]
    r = invoke("base", "register", "--name", "tiny", *args, "--sdk-version", SDK_VERSION)
    assert r.exit_code == 0, r.stderr
    ads = {}
    for name, rank, alpha, mods, seed in (("A", 8, 16, ("q_proj", "v_proj"), 1), ("C", 4, 8, ALL, 2)):
        t = synth.adapter_tensors(synth.module_paths(mods), rank, seed=seed)
        synth.write_adapter(tmp_path / name, t, synth.peft_config(rank, alpha, list(mods)))
        assert invoke("register", tmp_path / name, "--name", name).exit_code == 0
        assert invoke("validate", name, "--base", "tiny").exit_code == 0
        ads[name] = (t, alpha / rank)
    assert invoke("usecase", "create", "both", "--base", "tiny", "A", "C", "--alphas", "1,0.5").exit_code == 0
    return tmp_path, sdk, W, ads


def build(tmp: Path, *extra: str) -> object:
    return invoke(
        "build", "--base", "tiny", "--backend", "qairt", "--lora-version", "3", "-o", tmp / "out", "--json", *extra
    )


def op(module: str) -> str:
    return "/" + module.replace(".", "/") + "/MatMul"


def test_v3_contract_adapter_only(v3):
    tmp, sdk, _, _ = v3
    r = build(tmp, "--quant-updatable", "adapter_only")
    assert r.exit_code == 0, r.stderr
    out = (tmp / "out").resolve()
    seq = calls(sdk)
    assert [c["tool"] for c in seq if c["cwd"].startswith(str(out / "qairt" / "prefill"))] == [
        "qairt-lora-model-creator",
        "qairt-converter",
        "qairt-lora-importer",
    ]
    for g in GRAPHS:
        gdir = out / "qairt" / g
        creator = next(c for c in seq if c["tool"] == "qairt-lora-model-creator" and c["cwd"] == str(gdir / "creator"))
        assert creator["argv"] == [
            "--lora_config",
            "lora_config.yaml",
            "--output_dir",
            "../creator_out",
            "--quant_updatable_mode",
            "adapter_only",
        ]
        conv = next(c for c in seq if c["tool"] == "qairt-converter" and c["cwd"] == str(gdir))
        assert conv["argv"] == [
            "--input_network",
            "creator_out/base_model.onnx",
            "--lora_weight_list",
            "creator_out/lora_tensor_names.txt",
            "--quant_updatable_mode",
            "adapter_only",
            "--output_path",
            f"{g}.dlc",
        ]
        imp = next(c for c in seq if c["tool"] == "qairt-lora-importer" and c["cwd"] == str(gdir / "creator_out"))
        assert imp["argv"] == [
            "--input_network",
            "base_model.onnx",
            "--input_dlc",
            f"../{g}.dlc",
            "--lora_config",
            "lora_importer_config.yaml",
            "--output_dir",
            "../imported",
        ]
        # the creator's config: adapters with their JSON, one base use case, every adapter alone, the use case
        cfg = yaml.safe_load((gdir / "creator" / "lora_config.yaml").read_text())
        assert cfg["adapter"] == [
            {"name": "A_v1", "lora_config": "A_v1.json"},
            {"name": "C_v1", "lora_config": "C_v1.json"},
        ]
        assert [(u["name"], u["adapter_names"], u["model_name"]) for u in cfg["use-case"]] == [
            ("base", [], "base.onnx"),
            ("A_v1", ["A_v1"], "A_v1.onnx"),
            ("C_v1", ["C_v1"], "C_v1.onnx"),
            ("both", ["A_v1", "C_v1"], "both.onnx"),
        ]
        base_nodes = {n.name: n.op_type for n in onnx.load(str(gdir / "creator" / "base.onnx")).graph.node}
        a = json.loads((gdir / "creator" / "A_v1.json").read_text())
        assert a == {
            "name": "A_v1",
            "rank": 8,
            "alpha": 16.0,
            "target_operator_names": sorted(op(m) for m in synth.module_paths(ALL) if m.endswith(("q_proj", "v_proj"))),
        }
        c = json.loads((gdir / "creator" / "C_v1.json").read_text())
        assert c["rank"] == 4 and c["target_operator_names"] == sorted(op(m) for m in synth.module_paths(ALL))
        assert all(base_nodes[n] == "MatMul" for n in c["target_operator_names"])
        assert not any("lora" in n for n in base_nodes)  # the base model has no LoRA branch
    gen = next(c for c in seq if c["tool"] == "qnn-context-binary-generator")
    assert gen["cwd"] == str(out / "qairt") and "--adapter_weight_config" in gen["argv"]
    merged = yaml.safe_load((out / "qairt" / "prefill_decode.adapter_weight_config.yaml").read_text())
    assert sorted((u["name"], u["graph"]) for u in merged["use_case"]) == sorted(
        (n, g) for n in ("A_v1", "C_v1", "both") for g in GRAPHS
    )
    arts = r.json["artifacts"]
    secs = sorted(
        (a["kind"], a.get("use_case") or a["adapter"], Path(a["path"]).name) for a in arts if "section" in a["kind"]
    )
    assert secs == sorted(
        [("section", n, f"{g}_{n}_v1.bin") for n in ("A", "C") for g in GRAPHS]
        + [("use_case_section", "both", f"{g}_both.bin") for g in GRAPHS]
        + [("default_section", None, f"{g}_default_adapter.bin") for g in GRAPHS]
    )
    assert all(Path(a["path"]).is_file() for a in arts)
    assert not list((tmp / "out").glob(".loramgr-tmp-*"))


def test_v3_weights_reach_the_tools_exactly(v3):
    """The creator (stand-in) reads each use case's branches from the models loramgr gave it; the
    padded, scaled weights it hands the importer equal loramgr's own v3 section inputs (the ones the
    ort backend builds), column for column."""
    from loramgr.lora.inputs import prepared_inputs, use_case_inputs
    from loramgr.registry.api import Registry

    tmp, _, _, _ = v3
    assert build(tmp).exit_code == 0
    reg = Registry()
    base = reg.base("tiny")
    want = {
        "both": use_case_inputs([reg.adapter("A"), reg.adapter("C")], base),
        "A_v1": prepared_inputs(reg.adapter("A"), base),
        "C_v1": prepared_inputs(reg.adapter("C"), base),
    }
    for uc, inputs in want.items():
        got = load_file(str(tmp / "out" / "qairt" / "prefill" / "creator_out" / f"{uc}.safetensors"))
        for ap in base.points_of("prefill"):
            o = op(ap.module_path)
            ga, gb = got[f"{o}_loraA_MatMul_.weight"], got[f"{o}_loraB_MatMul_.weight"]
            r = ga.shape[1]
            np.testing.assert_allclose(ga, inputs[ap.tensor_a][:, :r], atol=1e-6)
            np.testing.assert_allclose(gb, inputs[ap.tensor_b][:r], atol=1e-6)
            assert not inputs[ap.tensor_a][:, r:].any()  # loramgr's padding is all there is beyond r
            np.testing.assert_array_equal(got[f"{o}_indices"][0], inputs[ap.tensor_indices][0, :r])


def test_v3_models_given_to_the_creator_equal_the_reference(v3):
    """Each use-case model, run alone on ONNX Runtime, equals the numpy reference of the base with that
    use case's adapters at alpha 1 (the creator adds the alpha vector itself); the base model is the
    base. Within 1e-5 (fp32)."""
    tmp, _, W, ads = v3
    assert build(tmp).exit_code == 0
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    cdir = tmp / "out" / "qairt" / "prefill" / "creator"

    def run(name: str) -> list[np.ndarray]:
        s = ort.InferenceSession(str(cdir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in s.get_inputs()] == ["x"]  # no LoRA or alpha inputs left
        return s.run(None, {"x": x})

    def ref(active: list[str]) -> list[np.ndarray]:
        outs = [x.astype(np.float64) @ w.astype(np.float64) for w in W.values()]
        for n in active:
            t, scaling = ads[n]
            full = synth.reference(x, W, t, scaling, 1.0)
            outs = [o + (f - x.astype(np.float64) @ w) for o, f, w in zip(outs, full, W.values(), strict=True)]
        return outs

    for name, active in (("base", []), ("A_v1", ["A"]), ("C_v1", ["C"]), ("both", ["A", "C"])):
        got, want = run(name), ref(active)
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)) < 1e-5, name
    assert max(float(np.abs(g - w).max()) for g, w in zip(run("both"), ref(["A"]), strict=True)) > 1e-3
    # and each equals the v3 reference base (the registered graph) with that entry's section applied
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    assert invoke("build", "--base", "tiny", "-o", tmp / "ort").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    s = LoraSession(Plan.load(tmp / "ort" / "plan.json"), graph="prefill")
    for name, entry in (("base", "default"), ("A_v1", "A"), ("C_v1", "C"), ("both", "both")):
        s.apply(entry)
        s.set_alpha(1.0)
        got = s.run({"x": x})
        assert max(float(np.abs(g - w).max()) for g, w in zip(run(name), got, strict=True)) <= 1e-5, name


@pytest.mark.parametrize("mode", ["none", "all"])
def test_v3_modes_argv(v3, mode):
    tmp, sdk, _, _ = v3
    r = build(tmp, "--quant-updatable", mode)
    assert r.exit_code == 0, r.stderr
    seq = calls(sdk)
    creator = [c for c in seq if c["tool"] == "qairt-lora-model-creator"]
    assert len(creator) == 2 and all(c["argv"][-2:] == ["--quant_updatable_mode", mode] for c in creator)
    imp = [c["argv"] for c in seq if c["tool"] == "qairt-lora-importer"]
    assert all(("--input_network" in a) == (mode != "none") for a in imp)


def test_v3_int8_runs_the_quantizer_and_refuses_what_the_sdk_would(v3):
    tmp, sdk, _, _ = v3
    r = build(tmp, "--precision", "int8", "--quant-updatable", "none")
    assert r.exit_code == 5 and "encodings_need_updatable_mode" in r.stdout and calls(sdk) == []
    r = build(tmp, "--precision", "int8", "--quant-updatable", "all")
    assert r.exit_code == 5 and "encodings_missing" in r.stdout and "both" in r.stderr and calls(sdk) == []
    assert not (tmp / "out" / "qairt").exists()
    r = build(tmp, "--precision", "int8")
    assert r.exit_code == 0, r.stderr
    seq = calls(sdk)
    quant = [c["argv"] for c in seq if c["tool"] == "qairt-quantizer"]
    assert sorted(quant) == sorted(
        ["--input_dlc", f"{g}.dlc", "--output_dlc", f"{g}_quantized.dlc", "--enable_float_fallback"] for g in GRAPHS
    )
    imp = [c["argv"] for c in seq if c["tool"] == "qairt-lora-importer"]
    assert all(a[a.index("--input_dlc") + 1].endswith("_quantized.dlc") and "--enable_float_fallback" in a for a in imp)
    cfg = yaml.safe_load((tmp / "out" / "qairt" / "prefill" / "creator" / "lora_config.yaml").read_text())
    assert [u.get("quant_overrides") for u in cfg["use-case"]] == [None, "A_v1.encodings", "C_v1.encodings", None]


def test_v3_refusals_before_any_tool(v3, tmp_path):
    tmp, sdk, _, _ = v3
    synth.write_base(tmp_path / "plain.onnx", synth.module_paths())
    assert (
        invoke("base", "register", tmp_path / "plain.onnx", "--name", "plain", "--sdk-version", SDK_VERSION).exit_code
        == 0
    )
    r = invoke("build", "--base", "plain", "--all", "--backend", "qairt", "--lora-version", "3", "-o", tmp / "p")
    assert r.exit_code in (3, 5)
    assert invoke("validate", "A", "--base", "plain").exit_code == 0
    r = invoke("build", "--base", "plain", "--backend", "qairt", "--lora-version", "3", "-o", tmp / "p")
    assert r.exit_code == 5 and "lora_alpha [1, N]" in r.stderr and calls(sdk) == []
    assert invoke("build", "--base", "tiny", "--lora-version", "3").exit_code == 2  # ort backend
    assert invoke("build", "--base", "tiny", "--backend", "qairt", "--quant-updatable", "all").exit_code == 2
    r = invoke("build", "--base", "tiny", "--backend", "qairt", "-o", tmp / "v2")
    assert r.exit_code == 2 and "--lora-version 3" in r.stderr  # v2 cannot build use cases


def test_v3_plan_genie_and_qnn_ep_configs(v3):
    tmp, _, _, _ = v3
    assert build(tmp, "--share-adapters").exit_code == 0
    out = tmp / "out"
    r = invoke("plan", "--base", "tiny", "--genie-config", out / "genie.json", "--qnn-ep-configs", out / "ep", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["lora_version"] == 3 and [u["name"] for u in plan["use_cases"]] == ["both"]
    genie = json.loads((out / "genie.json").read_text())
    assert genie == {
        "lora": {
            "version": 1,
            "lora-version": 3,
            "alpha-tensor-name": "lora_alpha",
            "adapters": [
                {"version": 1, "name": "A", "alphas": ["A"], "bin-sections": ["sections/A@1/prefill_A_v1.bin"]},
                {"version": 1, "name": "C", "alphas": ["C"], "bin-sections": ["sections/C@1/prefill_C_v1.bin"]},
                {
                    "version": 1,
                    "name": "both",
                    "alphas": ["A", "C"],
                    "bin-sections": ["sections/usecases/both/prefill_both.bin"],
                },
            ],
        }
    }
    files = sorted(p.name for p in (out / "ep").iterdir())
    assert files == sorted(f"{n}.{g}.txt" for n in ("A", "C", "both") for g in GRAPHS)
    line = (out / "ep" / "both.decode.txt").read_text().splitlines()[0]
    assert line == f"decode;{(out / 'sections' / 'usecases' / 'both' / 'prefill_both.bin').resolve()}"
    assert sorted(r.json["qnn_ep_configs"]) == sorted(str((out / "ep" / f).resolve()) for f in files)


def test_quant_overrides_per_mode():
    from loramgr.sections.backends.qairt_v3 import quant_overrides

    enc = {"version": "0.6.1", "activation_encodings": {"logits": [{"bitwidth": 16}]}, "param_encodings": {"w": [{}]}}
    assert quant_overrides(enc, "none") is None
    assert quant_overrides(enc, "adapter_only") == enc | {"activation_encodings": {}}
    assert quant_overrides(enc, "all") == enc
    assert quant_overrides(enc | {"param_encodings": {}}, "adapter_only") is None  # nothing of the LoRA weights
