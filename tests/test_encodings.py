"""Per-adapter encodings: AIMET JSON in/out, calibration, import, plan, quantized sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loramgr.formats import encodings as E
from loramgr.formats import quant as Q
from loramgr.testing import synth
from tests.conftest import invoke

PER_TENSOR = {
    "version": "0.6.1",
    "activation_encodings": {
        "out0": [
            {
                "bitwidth": 8,
                "dtype": "int",
                "is_symmetric": "False",
                "min": -1.0,
                "max": 3.0,
                "scale": 4.0 / 255,
                "offset": -64,
            }
        ]
    },
    "param_encodings": {},
}
PER_CHANNEL = {
    "activation_encodings": {},
    "param_encodings": {
        "m.lora_A.weight": [
            {
                "bitwidth": 8,
                "dtype": "int",
                "is_symmetric": "True",
                "min": -1.0,
                "max": 0.99,
                "scale": 1 / 128,
                "offset": -128,
            },
            {
                "bitwidth": 8,
                "dtype": "int",
                "is_symmetric": True,
                "min": -2.0,
                "max": 1.98,
                "scale": 2 / 128,
                "offset": -128,
            },
        ]
    },
}
V1 = {
    "version": "1.0.0",
    "activation_encodings": [
        {
            "name": "out0",
            "enc_type": "PER_TENSOR",
            "bw": 8,
            "dtype": "INT",
            "is_sym": False,
            "scale": [0.5],
            "offset": [-10],
        }
    ],
    "param_encodings": [],
}


@pytest.mark.parametrize("doc", [PER_TENSOR, PER_CHANNEL, V1])
def test_aimet_round_trip(doc, tmp_path):
    p = tmp_path / "e.json"
    p.write_text(json.dumps(doc))
    first = E.load(p)
    p2 = tmp_path / "e2.json"
    p2.write_text(E.dumps(first))
    assert E.load(p2) == first
    if doc is PER_CHANNEL:
        assert len(first["param_encodings"]["m.lora_A.weight"]) == 2
        assert first["param_encodings"]["m.lora_A.weight"][1]["is_symmetric"] == "True"
    if doc is V1:
        e = first["activation_encodings"]["out0"][0]
        assert e["scale"] == 0.5 and e["offset"] == -10 and e["min"] == -5.0 and e["max"] == 0.5 * 245


@pytest.mark.parametrize(
    "doc,key",
    [
        ({"activation_encodings": {"out0": [{"bitwidth": "eight"}]}}, "activation_encodings.out0[0].bitwidth"),
        ({"activation_encodings": {"out0": {"bitwidth": 8, "min": 0, "max": 1, "scale": 0.1}}}, "out0[0].offset"),
        (
            {
                "param_encodings": {
                    "w": [{"bitwidth": 8, "is_symmetric": "maybe", "min": 0, "max": 1, "scale": 1, "offset": 0}]
                }
            },
            "w[0].is_symmetric",
        ),
        ({"activation_encodings": {"o": [{"bitwidth": 8, "min": 2, "max": 1, "scale": 1, "offset": 0}]}}, "min <= max"),
        ({"activation_encodings": [{"bw": 8}]}, "activation_encodings[0]"),
        ({"nothing": 1}, "neither"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_malformed_rejected_naming_the_key(doc, key, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(E.InvalidInputError) as ei:
        E.load(p)
    assert key in ei.value.message and str(p) in ei.value.message


def test_weight_encodings_ignore_zero_padding():
    rng = np.random.default_rng(0)
    w = np.zeros((8, 16), np.float32)
    w[:, :4] = rng.standard_normal((8, 4))
    encs = Q.symmetric_per_channel(w, 8, axis=1)
    assert [e["scale"] for e in encs[4:]] == [1.0] * 12  # padded columns: own scale, exact zeros
    assert np.allclose([e["scale"] for e in encs[:4]], np.abs(w[:, :4]).max(axis=0) / 127)
    q, s = Q.quantize_symmetric(w, encs, axis=1)
    assert q.dtype == np.int8 and not q[:, 4:].any()
    assert np.abs(q * s - w).max() <= max(s[:4]) / 2 + 1e-7
    assert Q.symmetric_per_channel(w, 8, per_tensor=True)[0]["scale"] == pytest.approx(np.abs(w).max() / 127)


@pytest.fixture
def calibrated(tmp_path):
    W = synth.write_base(tmp_path / "base.onnx", synth.module_paths())
    assert invoke("base", "register", tmp_path / "base.onnx", "--name", "tiny").exit_code == 0
    ads = {}
    for name, alpha, seed in (("small", 1, 21), ("large", 64, 22)):
        t = synth.adapter_tensors(synth.module_paths(), 8, seed=seed)
        d = synth.write_adapter(tmp_path / name, t, synth.peft_config(8, alpha, ["q_proj", "v_proj"]))
        assert invoke("register", d).exit_code == 0 and invoke("validate", name, "--base", "tiny").exit_code == 0
        ads[name] = (t, alpha / 8)
    xs = np.random.default_rng(5).standard_normal((8, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    r = invoke("calibrate", "--base", "tiny", "--all", "--data", tmp_path / "calib.npz", "--json")
    assert r.exit_code == 0, r.stderr
    assert [a["adapter"] for a in r.json["adapters"]] == ["default", "large@1", "small@1"]
    return tmp_path, W, ads, xs


def test_calibration_per_adapter_covers_ranges_and_default_is_base(calibrated):
    tmp, W, ads, xs = calibrated
    scales = {}
    for name, (t, scaling) in ads.items():
        e = invoke("encodings", "show", name, "--json").json
        assert set(e) == {"version", "activation_encodings", "param_encodings"}
        assert (
            len(e["param_encodings"]) == 8
            and len(e["param_encodings"]["model.layers.0.self_attn.q_proj.lora_A.weight"]) == 16
        )
        outs = [synth.reference(x, W, t, scaling) for x in xs]
        for k in range(len(W)):
            enc = e["activation_encodings"][f"out{k}"][0]
            vals = np.stack([o[k] for o in outs])
            assert enc["min"] <= vals.min() + enc["scale"] and enc["max"] >= vals.max() - enc["scale"]
            assert enc["is_symmetric"] == "False" and enc["bitwidth"] == 8
        scales[name] = e["activation_encodings"]["out0"][0]["scale"]
    assert scales["large"] > 2 * scales["small"]
    d = invoke("encodings", "show", "default", "--base", "tiny", "--json").json
    base_outs = [synth.reference(x, W, {}, 1.0) for x in xs]
    e0 = d["activation_encodings"]["out0"][0]
    want = Q.asymmetric(min(o[0].min() for o in base_outs), max(o[0].max() for o in base_outs), 8)
    num = ("min", "max", "scale")
    assert {k: e0[k] for k in num} == pytest.approx({k: want[k] for k in num}, rel=1e-5)
    assert e0["offset"] == want["offset"] and d["param_encodings"] == {}
    # calibration is deterministic
    before = invoke("encodings", "show", "small", "--json").json
    assert invoke("calibrate", "--base", "tiny", "small", "--data", tmp / "calib.npz").exit_code == 0
    assert invoke("encodings", "show", "small", "--json").json == before
    # the plan serves them, and the default adapter's are the base's
    assert invoke("build", "--base", "tiny", "-o", tmp / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    from loramgr.runtime import Plan

    plan = Plan.load(tmp / "out" / "plan.json")
    assert plan.adapter("large").io_encodings("out0")["scale"] == scales["large"]
    assert plan.default_adapter.io_encodings("out0") == d["activation_encodings"]["out0"][0]
    assert plan.adapter("small").weight_encodings() == before["param_encodings"]
    assert next(s for s in plan.adapter("small").steps() if s["op"] == "update_io_encodings")["required"] is True


def test_import_replaces_named_tensors_and_register_with_encodings(calibrated, tmp_path):
    tmp, *_ = calibrated
    (tmp / "aimet.json").write_text(json.dumps(PER_TENSOR))
    r = invoke("encodings", "import", "small", tmp / "aimet.json", "--json")
    assert r.exit_code == 0 and r.json["tensors"] == 1
    e = invoke("encodings", "show", "small", "--json").json
    assert e["activation_encodings"]["out0"][0]["max"] == 3.0 and "out1" in e["activation_encodings"]
    one = invoke("encodings", "show", "small", "--tensor", "out0", "--json").json
    assert list(one["activation_encodings"]) == ["out0"]
    bad = tmp / "unknown.json"
    bad.write_text(json.dumps({"activation_encodings": {"no_such_tensor": PER_TENSOR["activation_encodings"]["out0"]}}))
    r = invoke("encodings", "import", "small", bad)
    assert r.exit_code == 4 and "no_such_tensor" in r.stderr
    # register --encodings: checked first, nothing is left behind on refusal
    t = synth.adapter_tensors(synth.module_paths(), 4, seed=9)
    d = synth.write_adapter(tmp_path / "third", t, synth.peft_config(4, 4, ["q_proj", "v_proj"]))
    n = len(invoke("list", "--json").json)
    r = invoke("register", d, "--base", "tiny", "--encodings", bad)
    assert r.exit_code == 4 and len(invoke("list", "--json").json) == n
    assert invoke("register", d, "--encodings", tmp / "aimet.json").exit_code == 2  # needs --base
    r = invoke("register", d, "--base", "tiny", "--encodings", tmp / "aimet.json", "--json")
    assert r.exit_code == 0 and r.json["encodings"] == 1
    assert (
        invoke("encodings", "show", "third", "--base", "tiny", "--json").json["activation_encodings"]["out0"][0]["max"]
        == 3.0
    )


def test_qairt_quant_overrides(tmp_path, monkeypatch):
    from tests.standin_sdk import calls, make_standin_sdk

    sdk = make_standin_sdk(tmp_path / "qairt-standin")
    synth.write_base(tmp_path / "b.onnx", synth.module_paths())
    assert (
        invoke(
            "base", "register", tmp_path / "b.onnx", "--name", "q", "--sdk-version", "2.28.0", "--precision", "int8"
        ).exit_code
        == 0
    )
    t = synth.adapter_tensors(synth.module_paths(), 4, seed=3)
    d = synth.write_adapter(tmp_path / "qa", t, synth.peft_config(4, 8, ["q_proj", "v_proj"]))
    assert invoke("register", d).exit_code == 0 and invoke("validate", "qa", "--base", "q").exit_code == 0
    r = invoke("build", "--base", "q", "--backend", "qairt", "--sdk-root", sdk, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    gdir = tmp_path / "out" / "qairt" / "b"
    import yaml

    cfg = yaml.safe_load((gdir / "lora_importer_config.yaml").read_text())
    assert cfg["use_case"][0]["quant_overrides"] == "qa_v1.encodings"
    enc = E.load(gdir / "qa_v1.encodings")
    assert (
        len(enc["param_encodings"]) == 8
        and enc["param_encodings"]["model.layers.1.self_attn.v_proj.lora_B.weight"][0]["bitwidth"] == 8
    )
    imp = next(c for c in calls(sdk) if c["tool"] == "qairt-lora-importer")
    assert "--enable_float_fallback" in imp["argv"]
    assert (gdir / "imported" / "qa_v1_lora.encodings").is_file()
    assert "imported_encodings" in {a["kind"] for a in r.json["artifacts"]}


@pytest.mark.slow
def test_quantized_sections_on_tiny_llama(tmp_path):
    """int8/int16 sections (integer weights + scales into DequantizeLinear) vs the fp32 adapter:
    cosine >= 0.999, top-1 agreement >= 99 %, int16 strictly closer than int8."""
    from loramgr.runtime.generate import _run_chain
    from loramgr.runtime.ort import lm_chains
    from tests.hf_models import peft_adapter, tiny_llama

    tiny_llama().save_pretrained(tmp_path / "hf")
    peft_adapter(tiny_llama(), tmp_path / "ad", seed=3, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    rng = np.random.default_rng(1)
    samples = [rng.integers(1, 128, size=8).tolist() for _ in range(48)]
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in samples))
    logits = {}
    for label, q in (("fp32", None), ("int8", "8"), ("int16", "16")):
        name = f"b{label}"
        extra = ["--quantized-lora", q] if q else []
        r = invoke(
            "base",
            "export",
            tmp_path / "hf",
            "--name",
            name,
            "--target-modules",
            "q_proj,v_proj",
            "--max-rank",
            "16",
            "--graphs",
            "prefill=8",
            "-o",
            tmp_path / name,
            *extra,
        )
        assert r.exit_code == 0, r.stderr
        assert invoke("register", tmp_path / "ad", "--name", "ad").exit_code == 0
        assert invoke("validate", "ad", "--base", name).exit_code == 0
        if q:
            c = invoke("calibrate", "--base", name, "ad", "--data", tmp_path / "calib.jsonl", "--json")
            assert c.exit_code == 0, c.stderr
        b = invoke("build", "--base", name, "ad", "-o", tmp_path / f"out-{label}", "--json")
        assert b.exit_code == 0, b.stderr
        assert invoke("plan", "--base", name).exit_code == 0
        plan = tmp_path / f"out-{label}" / "plan.json"
        if q:
            from loramgr.sections.backends.ort import read_section

            sec = next(a["path"] for a in b.json["artifacts"] if a["kind"] == "section")
            params = read_section(sec)[2]
            assert params["model.layers.0.self_attn.q_proj.lora_A.weight"].dtype == (np.int8 if q == "8" else np.int16)
            assert params["model.layers.0.self_attn.q_proj.lora_A.weight_scale"].shape == (16,)
            e = invoke("encodings", "show", "ad", "--base", name, "--json").json
            assert "logits" in e["activation_encodings"] and e["param_encodings"]
        pre, _ = lm_chains(str(plan), "ad")
        out = []
        for s in samples:
            ids = np.array([s], np.int64)
            out.append(
                _run_chain(
                    pre,
                    {
                        "input_ids": ids,
                        "attention_mask": np.ones((1, 8), np.int64),
                        "position_ids": np.arange(8, dtype=np.int64)[None],
                    },
                    {},
                )[0]
            )
        logits[label] = np.stack(out)
    ref = logits["fp32"]

    def cos(a):
        a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    def top1(a):
        return float(np.mean(a.argmax(-1) == ref.argmax(-1)))

    for label in ("int8", "int16"):
        assert cos(logits[label]) >= 0.999 and top1(logits[label]) >= 0.99, (
            label,
            cos(logits[label]),
            top1(logits[label]),
        )
    err8 = np.abs(logits["int8"] - ref).max()
    err16 = np.abs(logits["int16"] - ref).max()
    assert 0 < err16 < err8


def test_declared_intermediate_quantization_points_are_calibrated(tmp_path):
    """A base may declare intermediate tensors (here the LoRA branch output of module 0) to calibrate."""
    synth.write_base(tmp_path / "b.onnx", synth.module_paths())
    r = invoke("base", "register", tmp_path / "b.onnx", "--name", "qp", "--quant-point", "nope")
    assert r.exit_code == 4 and "nope" in r.stderr
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "qp", "--quant-point", "xab0").exit_code == 0
    t = synth.adapter_tensors(synth.module_paths(), 8, seed=5)
    d = synth.write_adapter(tmp_path / "qa", t, synth.peft_config(8, 16, ["q_proj", "v_proj"]))
    invoke("register", d)
    invoke("validate", "qa", "--base", "qp")
    xs = np.random.default_rng(2).standard_normal((6, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=xs)
    assert invoke("calibrate", "--base", "qp", "--all", "--data", tmp_path / "c.npz").exit_code == 0
    enc = invoke("encodings", "show", "qa", "--json").json["activation_encodings"]["xab0"][0]
    A = t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    B = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    branch = np.stack([(x @ A.T) @ B.T * 2.0 for x in xs])  # scaling 16/8
    assert enc["min"] <= branch.min() + enc["scale"] and enc["max"] >= branch.max() - enc["scale"]
    base_enc = invoke("encodings", "show", "default", "--base", "qp", "--json").json["activation_encodings"]["xab0"][0]
    # the base's branch is all zeros (a degenerate range gets the unit grid); the adapter's is not
    assert base_enc["min"] == 0 and base_enc["scale"] == pytest.approx(1 / 255) and enc["min"] < -0.01
    (tmp_path / "imp.json").write_text(
        json.dumps({"activation_encodings": {"xab0": PER_TENSOR["activation_encodings"]["out0"]}})
    )
    assert invoke("encodings", "import", "qa", tmp_path / "imp.json").exit_code == 0  # a declared point is a known name


def test_session_quantize_dequantize_use_the_active_adapters_encoding(calibrated):
    """LoraSession.quantize/dequantize follow AIMET's x = scale * (q + offset) with the encoding of the
    adapter that is applied (reference written out here, not taken from loramgr)."""
    from loramgr.runtime import Plan, PlanLookupError
    from loramgr.runtime.ort import LoraSession

    tmp = calibrated[0]
    assert invoke("build", "--base", "tiny", "--all", "-o", tmp / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    plan = Plan.load(tmp / "out" / "plan.json")
    s = LoraSession(plan)
    x = np.linspace(-3, 3, 101).astype(np.float32)
    for name in ("small", "large"):
        s.apply(name)
        e = invoke("encodings", "show", name, "--json").json["activation_encodings"]["out0"][0]
        scale, offset, top = e["scale"], e["offset"], 2 ** e["bitwidth"] - 1
        want_q = [min(max(round(float(v) / scale) - offset, 0), top) for v in x]
        q = s.quantize("out0", x)
        assert q.tolist() == want_q
        assert np.allclose(s.dequantize("out0", q), [(c + offset) * scale for c in want_q], atol=1e-6)
        inside = (x >= e["min"]) & (x <= e["max"])
        assert np.abs(s.dequantize("out0", q)[inside] - x[inside]).max() <= scale / 2 + 1e-6
    with pytest.raises(PlanLookupError):
        s.quantize("no_such_tensor", x)
