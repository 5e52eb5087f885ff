"""qairt backend, tested by contract against a STAND-IN SDK directory (tests/standin_sdk.py): exact
argv of each tool, the YAML files (parsed and compared), section collection, SDK-version refusal and
tool failures (exit 7, build failed, nothing recorded as built). No device or real SDK is involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from loramgr.testing import synth
from tests.conftest import invoke
from tests.standin_sdk import calls, make_standin_sdk

SDK_VERSION = "2.28.0.241029"


@pytest.fixture
def q(tmp_path, monkeypatch):
    """A 2-graph base registered with the SDK version, 2 validated adapters, a stand-in SDK."""
    sdk = make_standin_sdk(tmp_path / "qairt-standin-sdk")
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(sdk))
    synth.write_base(tmp_path / "prefill.onnx", synth.module_paths())
    synth.write_base(tmp_path / "decode.onnx", synth.module_paths())
    r = invoke(
        "base",
        "register",
        "--name",
        "tiny",
        "--graph",
        f"prefill={tmp_path / 'prefill.onnx'}",
        "--graph",
        f"decode={tmp_path / 'decode.onnx'}",
        "--sdk-version",
        SDK_VERSION,
    )
    assert r.exit_code == 0, r.stderr
    for name, rank, seed in (("ad-a", 4, 1), ("ad.b", 8, 2)):
        t = synth.adapter_tensors(synth.module_paths(), rank, seed=seed)
        d = synth.write_adapter(tmp_path / name, t, synth.peft_config(rank, 16, ["q_proj", "v_proj"]))
        assert invoke("register", d, "--name", name).exit_code == 0
        assert invoke("validate", name, "--base", "tiny").exit_code == 0
    return tmp_path, sdk


def build(tmp: Path, *extra) -> object:
    return invoke("build", "--base", "tiny", "--backend", "qairt", "-o", tmp / "out", "--json", *extra)


def test_contract_unshared(q):
    from loramgr.lora.inputs import prepared_inputs
    from loramgr.registry.api import Registry

    tmp, sdk = q
    r = build(tmp)
    assert r.exit_code == 0, r.stderr
    res = r.json
    assert res["status"] == "done" and res["backend"] == "qairt" and res["share_adapters"] is False
    out = tmp / "out"
    lib = sdk / "lib" / "x86_64-linux-clang"
    seq = calls(sdk)
    assert sorted(c["tool"] for c in seq) == ["qairt-converter"] * 2 + ["qairt-lora-importer"] * 2 + [
        "qnn-context-binary-generator"
    ]
    assert all(c["env_root"] == str(sdk) for c in seq)
    reg = Registry()
    base = reg.base("tiny")
    wl = {g: [n for ap in base.attachment_points for n in (ap.tensor_a, ap.tensor_b)] for g in base.graph_names}
    for g in ("prefill", "decode"):
        conv = next(c for c in seq if c["tool"] == "qairt-converter" and c["cwd"].endswith(f"/qairt/{g}"))
        onnx_path = str(out / "base" / f"{g}.onnx")
        assert conv["argv"] == [
            "--input_network",
            onnx_path,
            "--lora_weight_list",
            "lora_weights.txt",
            "--quant_updatable_mode",
            "none",
            "--output_path",
            f"{g}.dlc",
        ]
        imp = next(c for c in seq if c["tool"] == "qairt-lora-importer" and c["cwd"].endswith(f"/qairt/{g}"))
        assert imp["argv"] == [
            "--input_network",
            onnx_path,
            "--input_dlc",
            f"{g}.dlc",
            "--lora_config",
            "lora_importer_config.yaml",
            "--output_dir",
            "imported",
        ]
        cfg = yaml.safe_load((out / "qairt" / g / "lora_importer_config.yaml").read_text())
        assert cfg == {
            "use_case": [
                {"name": "ad-a_v1".replace("-", "_"), "model_name": onnx_path, "lora_weights": "ad_a_v1.safetensors"},
                {"name": "ad_b_v1", "model_name": onnx_path, "lora_weights": "ad_b_v1.safetensors"},
            ]
        }
        assert (out / "qairt" / g / "lora_weights.txt").read_text().split() == sorted(
            wl[g], key=lambda s: [int(t) if t.isdigit() else t for t in __import__("re").split(r"(\d+)", s)]
        )
        # prepared weights are keyed by the graph's tensor names and equal loramgr's prepared inputs
        for ref, uc in (("ad-a", "ad_a_v1"), ("ad.b", "ad_b_v1")):
            got = load_file(str(out / "qairt" / g / f"{uc}.safetensors"))
            want = prepared_inputs(reg.adapter(ref), base)
            assert sorted(got) == sorted(wl[g])
            for k in got:
                np.testing.assert_array_equal(got[k], want[k])
    gen = next(c for c in seq if c["tool"] == "qnn-context-binary-generator")
    assert gen["cwd"] == str(out / "qairt")  # the tools run where the build log says, re-runnable by hand
    assert gen["argv"] == [
        "--backend",
        str(lib / "libQnnHtp.so"),
        "--model",
        str(lib / "libQnnModelDlc.so"),
        "--dlc_path",
        "prefill/prefill.dlc,decode/decode.dlc",
        "--binary_file",
        "prefill_decode",
        "--output_dir",
        "contexts/prefill_decode",
        "--adapter_weight_config",
        "prefill_decode.adapter_weight_config.yaml",
    ]
    merged_text = (out / "qairt" / "prefill_decode.adapter_weight_config.yaml").read_text()
    assert "share_adapters_between_graphs" not in merged_text
    merged = yaml.safe_load(merged_text)
    assert [(c["name"], c["graph"], c["weights"]) for c in merged["use_case"]] == [
        ("ad_a_v1", "prefill", "prefill/imported/ad_a_v1_lora.safetensors"),
        ("ad_b_v1", "prefill", "prefill/imported/ad_b_v1_lora.safetensors"),
        ("ad_a_v1", "decode", "decode/imported/ad_a_v1_lora.safetensors"),
        ("ad_b_v1", "decode", "decode/imported/ad_b_v1_lora.safetensors"),
    ]
    for c in merged["use_case"]:  # relative paths stay valid next to the config after the build
        assert (out / "qairt" / c["weights"]).is_file()
    arts = res["artifacts"]
    secs = sorted((a["adapter"], a["graphs"], Path(a["path"]).name) for a in arts if a["kind"] == "section")
    assert secs == [
        ("ad-a", ["decode"], "decode_ad_a_v1.bin"),
        ("ad-a", ["prefill"], "prefill_ad_a_v1.bin"),
        ("ad.b", ["decode"], "decode_ad_b_v1.bin"),
        ("ad.b", ["prefill"], "prefill_ad_b_v1.bin"),
    ]
    defaults = sorted(Path(a["path"]).name for a in arts if a["kind"] == "default_section")
    assert defaults == ["decode_default_adapter.bin", "prefill_default_adapter.bin"]
    kinds = {a["kind"] for a in arts}
    assert {
        "context_binary",
        "importer_config",
        "adapter_weight_config",
        "dlc",
        "prepared_weights",
        "weight_list",
    } <= kinds
    for a in arts:
        assert Path(a["path"]).is_file() and Path(a["path"]).stat().st_size == a["size"]
    assert not (out / ".loramgr-tmp-1").exists()
    assert {a["status"] for a in invoke("list", "--json").json} == {"built"}
    rec = invoke("plan", "--base", "tiny", "--json")
    assert rec.exit_code == 0, rec.stderr
    from loramgr.runtime import Plan

    plan = Plan.load(out / "plan.json")
    assert plan.doc["base"]["sdk_version"] == SDK_VERSION
    ctxs = plan.doc["base"]["contexts"]
    assert [c["name"] for c in ctxs] == ["prefill_decode"] and ctxs[0]["binary"][
        "path"
    ] == "contexts/prefill_decode.bin"
    assert [s.path for s in plan.adapter("ad-a").sections("decode")] == [out / "sections/ad-a@1/decode_ad_a_v1.bin"]


def test_contract_super_adapters(q):
    tmp, sdk = q
    unshared = build(tmp).json
    r = build(tmp, "--share-adapters")
    assert r.exit_code == 0, r.stderr
    res = r.json
    text = (tmp / "out" / "qairt" / "prefill_decode.adapter_weight_config.yaml").read_text()
    assert text.startswith("share_adapters_between_graphs: Yes\n")
    assert yaml.safe_load(text)["share_adapters_between_graphs"] is True
    sup = [a for a in res["artifacts"] if a["kind"] == "super_section"]
    assert sorted((a["adapter"], tuple(a["graphs"])) for a in sup) == [
        ("ad-a", ("prefill", "decode")),
        ("ad.b", ("prefill", "decode")),
    ]
    assert [a["graphs"] for a in res["artifacts"] if a["kind"] == "default_section"] == [["prefill", "decode"]]
    b_sh = sum(a["size"] for a in sup)
    b_un = sum(a["size"] for a in unshared["artifacts"] if a["kind"] == "section")
    assert b_sh <= 0.55 * b_un


def test_sdk_version_mismatch_refused_before_any_build(q, tmp_path):
    tmp, _ = q
    other = make_standin_sdk(tmp_path / "qairt-standin-other", version="2.29.0", build_id="250101")
    r = build(tmp, "--sdk-root", other)
    assert r.exit_code == 5
    assert "2.28.0.241029" in r.stderr and "2.29.0.250101" in r.stderr and "same SDK version" in r.stderr
    assert calls(other) == []
    assert not (tmp / "out" / "sections").exists()
    from loramgr.registry.api import Registry
    from loramgr.registry.models import BuildRow

    with Registry().session() as s:
        assert s.query(BuildRow).count() == 0
    # a version in the directory name serves when there is no sdk.yaml; a shorter recorded version matches
    (other / "sdk.yaml").unlink()
    renamed = other.rename(tmp_path / "qairt-2.28.0.241029")
    assert build(tmp, "--sdk-root", renamed).exit_code == 0


def test_base_without_sdk_version_refused(q):
    tmp, sdk = q
    synth.write_base(tmp / "solo.onnx", synth.module_paths())
    assert invoke("base", "register", tmp / "solo.onnx", "--name", "solo").exit_code == 0
    r = invoke("build", "--base", "solo", "ad-a", "--backend", "qairt", "-o", tmp / "o2")
    assert r.exit_code == 5 and "sdk_version" in r.stderr


@pytest.mark.parametrize("tool", ["qairt-converter", "qairt-lora-importer", "qnn-context-binary-generator"])
def test_tool_failure_exit_7_and_nothing_built(q, monkeypatch, tool):
    tmp, sdk = q
    monkeypatch.setenv("STANDIN_FAIL", tool)
    r = build(tmp)
    assert r.exit_code == 7
    assert tool in r.stderr and "updatable tensor mismatch (simulated)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {a["status"] for a in invoke("list", "--json").json} == {"validated"}
    from loramgr.registry.api import Registry

    rec = Registry().builds.get(1)
    assert rec.status == "failed" and rec.artifacts == ()
    assert "stand-in failure requested" in rec.log and f"bin/x86_64-linux-clang/{tool}" in rec.log
    assert not list((tmp / "out").glob("sections/**/*.bin")) and not (tmp / "out" / ".loramgr-tmp-1").exists()
    monkeypatch.delenv("STANDIN_FAIL")
    assert build(tmp).json["status"] == "done"


def test_missing_output_missing_tool_and_timeout(q, monkeypatch):
    tmp, sdk = q
    monkeypatch.setenv("STANDIN_SKIP", "qnn-context-binary-generator")
    r = build(tmp)
    assert r.exit_code == 7 and "qnn-context-binary-generator" in r.stderr and "did not write" in r.stderr
    monkeypatch.setenv("STANDIN_SKIP", "qairt-lora-importer")
    r = build(tmp)
    assert r.exit_code == 7 and "lora_output_files.yaml" in r.stderr
    monkeypatch.delenv("STANDIN_SKIP")
    monkeypatch.setenv("STANDIN_HANG", "qairt-lora-importer")
    r = build(tmp, "--tool-timeout", "1")
    assert r.exit_code == 7 and "timed out after 1 s" in r.stderr
    monkeypatch.delenv("STANDIN_HANG")
    (sdk / "bin" / "x86_64-linux-clang" / "qnn-context-binary-generator").unlink()
    r = build(tmp)
    assert r.exit_code == 7 and "qnn-context-binary-generator: not found" in r.stderr
    assert {a["status"] for a in invoke("list", "--json").json} == {"validated"}


def test_given_dlc_skips_conversion_and_incremental(q, tmp_path):
    tmp, sdk = q
    import json

    dlcs = []
    for g in ("prefill", "decode"):
        p = tmp_path / f"user-{g}.dlc"
        names = [f"{m}.lora_{x}.weight" for m in synth.module_paths() for x in "AB"]
        p.write_text(json.dumps({"standin_dlc": True, "updatable": names}))
        dlcs += ["--dlc", f"{g}={p}"]
    r = build(tmp, *dlcs, "-j", "2")
    assert r.exit_code == 0, r.stderr
    assert "qairt-converter" not in {c["tool"] for c in calls(sdk)}
    n = len(calls(sdk))
    again = build(tmp, *dlcs).json  # unchanged: no tool runs at all
    assert len(calls(sdk)) == n and again["rebuilt"] == [] and again["status"] == "done"
    t = synth.adapter_tensors(synth.module_paths(), 2, seed=9)
    d = synth.write_adapter(tmp / "ad-c", t, synth.peft_config(2, 4, ["q_proj", "v_proj"]))
    assert invoke("register", d).exit_code == 0 and invoke("validate", "ad-c", "--base", "tiny").exit_code == 0
    third = build(tmp, *dlcs).json
    assert third["rebuilt"] == ["ad-c@1"]
    cfg = yaml.safe_load((tmp / "out" / "qairt" / "decode" / "lora_importer_config.yaml").read_text())
    assert [c["name"] for c in cfg["use_case"]] == ["ad_c_v1"]
    names = sorted(Path(a["path"]).name for a in third["artifacts"] if a["kind"] == "section")
    assert names == sorted(f"{g}_{u}.bin" for g in ("prefill", "decode") for u in ("ad_a_v1", "ad_b_v1", "ad_c_v1"))
    assert all(Path(a["path"]).is_file() for a in third["artifacts"])
    # another DLC is another cache key: everything rebuilds
    Path(dlcs[1].split("=", 1)[1]).write_text(Path(dlcs[1].split("=", 1)[1]).read_text() + " ")
    assert len(build(tmp, *dlcs).json["rebuilt"]) == 4


def test_genie_config_golden(q):
    """The Genie `lora` block of a super-adapter build equals the golden file byte for byte; an
    unshared build of a 2-graph context is refused (Genie wants one bin-section per context)."""
    from loramgr.deploy.genie import check_block

    tmp, _ = q
    assert build(tmp, "--share-adapters").exit_code == 0
    r = invoke("plan", "--base", "tiny", "--genie-config", tmp / "out" / "genie.json", "--json")
    assert r.exit_code == 0, r.stderr
    golden = Path(__file__).parent / "golden" / "genie_lora.json"
    assert (tmp / "out" / "genie.json").read_text() == golden.read_text()
    with pytest.raises(ValueError):
        check_block({**yaml.safe_load(golden.read_text())["lora"], "extra": 1})
    assert build(tmp).exit_code == 0
    r = invoke("plan", "--base", "tiny", "--genie-config", tmp / "out" / "genie2.json")
    assert r.exit_code == 5 and "--share-adapters" in r.stderr and not (tmp / "out" / "genie2.json").exists()
