"""Quantization the Qualcomm way, with real AIMET (aimet-onnx, no stand-in): `calibrate --engine aimet`
per adapter and use case, AIMET's own encoding files imported to the logits of AIMET's own simulation,
the alpha/r fold and the clip refusal of `encodings import`, and `verify` holding an int8 build to its
scheme's cosine (and catching a wrong encoding)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from loramgr.export.tiny import peft_adapter, tiny_llama
from tests.conftest import invoke

pytestmark = pytest.mark.slow
aimet = pytest.importorskip("aimet_onnx", reason="the [aimet] extra (scripts/env.sh installs it)")

S = 8
ALPHA, R = 32, 8  # PEFT scaling 4: a lora_B encoding of the unscaled B clips badly


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


@pytest.fixture
def q8(tmp_path):
    """A tiny Llama (prefill and decode graphs) exported with int8 LoRA inputs and two alpha slots, two
    PEFT adapters (alpha 32, rank 8) registered, a use case of both, a calibration set of 12 prompts."""
    tiny_llama().save_pretrained(tmp_path / "hf")
    for i in range(2):
        peft_adapter(
            tiny_llama(), tmp_path / f"ad{i}", seed=20 + i, r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"]
        )
    ok("base", "export", tmp_path / "hf", "--name", "q", "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--graphs", f"prefill={S},decode=1", "--context-len", "16", "--quantized-lora", "8", "--max-adapters", "2",
       "-o", tmp_path / "onnx")  # fmt: skip
    for i in range(2):
        ok("register", tmp_path / f"ad{i}", "--name", f"ad{i}")
        ok("validate", f"ad{i}", "--base", "q")
    ok("usecase", "create", "both", "ad0", "ad1", "--base", "q", "--alphas", "1,0.5")
    rng = np.random.default_rng(0)
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"input_ids": rng.integers(0, 128, S).tolist()}) + "\n" for _ in range(12)))
    return tmp_path, data


def _acts(ref: str) -> dict:
    return ok("encodings", "show", ref, "--base", "q", "--json").json["activation_encodings"]


def test_calibrate_aimet_per_adapter_and_use_case(q8):
    tmp, data = q8
    res = ok(
        "calibrate", "--base", "q", "--all", "--data", data, "--engine", "aimet", "--scheme", "w8a16", "--json"
    ).json
    assert res["engine"] == "aimet" and res["scheme"] == "w8a16" and (res["act_bits"], res["weight_bits"]) == (16, 8)
    owners = {a["adapter"]: a for a in res["adapters"]}
    assert set(owners) == {"default", "ad0@1", "ad1@1", "usecase:both"}
    assert all(a["cosine"] >= 0.999 for a in owners.values()), owners

    import onnx

    from loramgr.quantsim import downstream

    m = onnx.load(str(tmp / "onnx" / "prefill.onnx"), load_external_data=False)
    g = m.graph
    io = {i.name for i in g.input} | {o.name for o in g.output}
    lora_in = {i.name for i in g.input if ".lora_" in i.name}
    changed = downstream(m, lora_in | {"lora_alpha"})
    dm = onnx.load(str(tmp / "onnx" / "decode.onnx"), load_external_data=False)  # the decode graph's too
    io |= {i.name for i in dm.graph.input} | {o.name for o in dm.graph.output}
    changed |= downstream(dm, lora_in | {"lora_alpha"})
    a0, a1, base = _acts("ad0"), _acts("ad1"), _acts("default")
    inner = set(a0) - io
    assert inner and set(a0) <= changed | {"logits"}  # only what the adapter changes is its own
    a_in = {n for n in lora_in if ".lora_A." in n} | {f"{n}_dequantized" for n in lora_in if ".lora_A." in n}
    branch = {n.output[0] for n in g.node if n.op_type == "MatMul" and any(i in a_in for i in n.input)}
    assert len(branch) == 4
    assert branch & set(a0), "the LoRA-branch outputs (x @ A) have per-adapter encodings"
    assert sum(json.dumps(a0[n]) != json.dumps(a1[n]) for n in inner) > len(inner) // 2  # per adapter
    assert set(a0) < set(base)  # the base holds every tensor; unchanged ones are shared, not copied
    prefill_out = {o for n in g.node for o in n.output}
    assert {o for n in dm.graph.node for o in n.output} - prefill_out & set(base)  # the decode graph is calibrated
    enc = ok("encodings", "show", "default", "--base", "q", "--json").json["param_encodings"]
    assert any(".lora_" not in n for n in enc), "the base's own weights have encodings"
    p0 = ok("encodings", "show", "ad0", "--base", "q", "--json").json["param_encodings"]
    assert sorted(p0) == sorted(lora_in - {n for n in lora_in if n.endswith((".lora_indices", "_scale"))})
    assert all(e["bitwidth"] == 8 and e["is_symmetric"] == "True" for v in p0.values() for e in v)

    # the base's encodings are computed with LoRA off: the same whichever adapters a run calibrates
    ok("calibrate", "ad1", "--base", "q", "--data", data, "--engine", "aimet", "--scheme", "w8a16")
    assert _acts("default") == base and _acts("ad0") == a0

    ok("build", "--base", "q", "-o", tmp / "out")
    ok("plan", "--base", "q")
    from loramgr.runtime import Plan

    plan = Plan.load(tmp / "out" / "plan.json")
    assert inner <= set(plan.entry("ad0").io_encodings() or {})  # into the plan's update_io_encodings
    assert set(plan.entry("both").io_encodings() or {}) - io  # and the use case's
    v = ok("verify", "--plan", tmp / "out" / "plan.json", "--json").json
    assert v["ok"] and {r["mode"] for r in v["adapters"]} == {"peft:w8a16"}, v


def test_aimet_files_import_to_aimets_own_logits(q8):
    """AIMET's simulation of ad0 on the base's float graph, exported as AIMET writes it (1.0.0 and
    2.0.0), imported into loramgr (the base's own and ad0's), built as int8: loramgr's quantized
    simulation gives AIMET's logits, far closer than the float model does."""
    tmp, data = q8
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    ok("base", "export", tmp / "hf", "--name", "f", "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--graphs", f"prefill={S}", "--context-len", "16", "--max-adapters", "2", "-o", tmp / "float")  # fmt: skip
    model = onnx.load(str(tmp / "float" / "prefill.onnx"))
    for t in model.graph.initializer:  # the mask fill, clamped by hand (its range would swamp the scores')
        a = numpy_helper.to_array(t)
        if t.data_type == onnx.TensorProto.FLOAT and a.size == 1 and float(a.ravel()[0]) < -1e30:
            t.CopyFrom(numpy_helper.from_array(np.full(a.shape, -100.0, np.float32), t.name))
    lora = {}  # ad0 from its PEFT file: A.T and (alpha / r) B.T, zero-padded to rank 16
    for k, v in load_file(str(tmp / "ad0" / "adapter_model.safetensors")).items():
        mod = k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        if ".lora_A" in k:
            lora[f"{mod}.lora_A.weight"] = np.pad(v.T, ((0, 0), (0, 16 - R))).astype(np.float32)
        else:
            lora[f"{mod}.lora_B.weight"] = np.pad((ALPHA / R) * v.T, ((0, 16 - R), (0, 0))).astype(np.float32)
    lora["lora_alpha"] = np.array([[1.0, 0.0]], np.float32)
    lora |= {
        f"{m.rsplit('.lora_', 1)[0]}.lora_indices": np.array([[0] * R + [2] * (16 - R)]) for m in lora if "lora_A" in m
    }
    from aimet_onnx.quantsim import QuantizationSimModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = QuantizationSimModel(model, param_type="int8", activation_type="int16", quant_scheme="min_max",
                                   config_file="htp_v73", providers=["CPUExecutionProvider"])  # fmt: skip
    sim.qc_quantize_op_dict["lora_alpha"].enabled = False

    def feeds(ids):
        x = np.array([ids], np.int64)
        return {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(S)[None]} | lora

    prompts = [json.loads(line)["input_ids"] for line in data.read_text().splitlines()]
    sim.compute_encodings(lambda s: [s.run(None, feeds(p)) for p in prompts])
    ids = [3, 17, 42, 5, 99, 1, 64, 7]
    want = sim.session.run(None, feeds(ids))[0]
    sim.export(str(tmp), "v1", export_model=False, encoding_version="1.0.0")
    sim.export(str(tmp), "v2", export_model=False, encoding_version="2.0.0")

    for f in ("v1", "v2"):
        ok("encodings", "import", "default", tmp / f"{f}.encodings", "--base", "q")
        ok("encodings", "import", "ad0", tmp / f"{f}.encodings", "--base", "q")
        stored = ok("encodings", "show", "ad0", "--base", "q", "--json").json
        if f == "v1":
            first = stored
        else:  # both layouts give the same encodings (2.0.0 adds data-movement outputs)
            for sec in ("activation_encodings", "param_encodings"):
                for name, entries in first[sec].items():
                    got = stored[sec][name]
                    assert [e["offset"] for e in got] == [e["offset"] for e in entries], (name, got, entries)
                    assert np.allclose([e["scale"] for e in got], [e["scale"] for e in entries], rtol=1e-6), name

    # the LoRA flow's layout of the same encodings: flat, PEFT's names, lora_B of the unscaled B (AIMET
    # keeps alpha/r in lora_scale tensors): renamed and folded back to exactly what AIMET computed
    v1 = json.loads((tmp / "v1.encodings").read_text())
    flow = {}
    for e in v1["param_encodings"]:
        if ".lora_" not in e["name"]:
            continue
        module, kind = e["name"].rsplit(".lora_", 1)
        entry = {k: v for k, v in e.items() if k != "name"}
        if kind.startswith("B"):
            entry["scale"] = [x / (ALPHA / R) for x in entry["scale"]]
            flow[f"base_model.model.{module}.lora_scale"] = {"dtype": "FLOAT", "bw": 32, "scale": [1.0], "offset": [0]}
        flow[f"base_model.model.{module}.lora_{kind[0]}.default.weight"] = entry
    (tmp / "flow.encodings").write_text(json.dumps(flow))
    r = ok("encodings", "import", "ad0", tmp / "flow.encodings", "--base", "q", "--json").json
    assert len(r["folded"]) == 4 and r["tensors"] == 8
    again = ok("encodings", "show", "ad0", "--base", "q", "--json").json["param_encodings"]
    for name, entries in first["param_encodings"].items():
        assert np.allclose([e["scale"] for e in again[name]], [e["scale"] for e in entries], rtol=1e-6), name

    ok("build", "--base", "q", "-o", tmp / "out")
    ok("plan", "--base", "q")
    from loramgr.quantsim import QuantSim
    from loramgr.registry.api import Registry
    from loramgr.runtime import Plan
    from loramgr.verification import _prefill_logits

    plan = Plan.load(tmp / "out" / "plan.json")
    reg = Registry()
    base = reg.base("q")
    weights = {k: v for k, v in reg.encodings.get(base.id, None).param.items() if k not in base.lora_inputs}
    got = _prefill_logits(plan, "ad0", np.array([ids]), None, QuantSim(plan, "ad0", weights))
    flt = _prefill_logits(plan, "ad0", np.array([ids]), None, None)
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
    assert np.abs(got - want).max() < np.abs(flt - want).max() / 20


def _flat(name: str, scale: float) -> dict:
    return {
        name: {"dtype": "INT", "bw": 8, "is_sym": True, "scale": [scale], "offset": [-128], "enc_type": "PER_TENSOR"}
    }


def test_import_folds_alpha_over_r_and_refuses_clipping(q8):
    tmp, _ = q8
    from safetensors.numpy import load_file

    t = load_file(str(tmp / "ad0" / "adapter_model.safetensors"))
    key = next(k for k in t if "layers.0.self_attn.q_proj.lora_B" in k)
    raw = float(np.abs(t[key]).max()) / 127  # AIMET's LoRA flow: lora_B as stored, alpha/r in lora_scale
    ours = "model.layers.0.self_attn.q_proj.lora_B.weight"
    peft = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"

    def imp(doc: dict, *extra: str):
        p = tmp / "x.encodings"
        p.write_text(json.dumps(doc))
        return invoke("encodings", "import", "ad0", p, "--base", "q", "--json", *extra)

    def stored_scale() -> float:
        return ok("encodings", "show", "ad0", "--base", "q", "--tensor", ours, "--json").json["param_encodings"][ours][
            0
        ]["scale"]

    # the right range (scaled B): imported as it is
    assert imp(_flat(ours, raw * ALPHA / R)).json["folded"] == []
    # half of it clips a quarter of the weights: refused, naming the tensor and the reach
    r = imp(_flat(ours, raw * ALPHA / R / 2))
    assert r.exit_code == 5 and ours in r.stderr and "clips" in r.stderr and "1.9" in r.stderr, r.stderr
    assert abs(stored_scale() - raw * ALPHA / R) < 1e-9  # nothing written
    # the LoRA flow's own file: PEFT's names, the unscaled B, its lora_scale tensor: renamed and folded
    flow = _flat(peft, raw) | {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_scale": {
            "dtype": "FLOAT", "bw": 32, "enc_type": "PER_TENSOR", "scale": [1.0], "offset": [0]}}  # fmt: skip
    r = imp(flow)
    assert r.exit_code == 0 and r.json["folded"] == [ours], r.stderr
    assert abs(stored_scale() - raw * ALPHA / R) < 1e-9
    # without the scale tensor, a tight min-max encoding of the unscaled B is recognised and folded ...
    assert imp(_flat(peft, raw)).json["folded"] == [ours]
    # ... unless told not to: then it clips, and the message names the likely cause
    r = imp(_flat(peft, raw), "--fold-scale", "no")
    assert r.exit_code == 5 and f"alpha/r = {ALPHA / R:g}" in r.stderr and "--fold-scale yes" in r.stderr
    # --allow-clip keeps a clipping encoding, saying so
    r = invoke("encodings", "import", "ad0", tmp / "x.encodings", "--base", "q", "--fold-scale", "no", "--allow-clip")
    assert r.exit_code == 0 and "outside its encoding" in r.stderr
    # unknown tensors are exit 4; a block-wise 2.0.0 entry is refused by name
    assert imp(_flat("model.layers.9.self_attn.q_proj.lora_B.weight", raw)).exit_code == 4
    v2 = {
        "version": "2.0.0",
        "encodings": [{"name": ours, "output_dtype": "int8", "y_scale": [raw], "axis": 1, "block_size": 4}],
    }
    r = imp(v2)
    assert r.exit_code == 4 and "block-wise" in r.stderr
    assert invoke("encodings", "import", "ad0", tmp / "x.encodings", "--base", "q", "--fold-scale", "-2").exit_code == 2


def test_verify_holds_an_int8_build_to_its_scheme_and_catches_a_wrong_encoding(q8):
    tmp, data = q8
    ok("calibrate", "--base", "q", "--all", "--data", data, "--engine", "aimet", "--scheme", "w8a16")
    ok("build", "--base", "q", "-o", tmp / "good")
    ok("plan", "--base", "q", "-o", tmp / "good" / "plan.json")
    v = ok("verify", "--plan", tmp / "good" / "plan.json", "--json").json
    rows = {r["adapter"]: r for r in v["adapters"]}
    assert all(r["ok"] and r["mode"] == "peft:w8a16" and r["tolerance"] == 0.995 for r in rows.values()), rows
    assert all(r["delta_cosine"] >= 0.9995 and r["max_abs_diff"] > 1e-4 for r in rows.values())  # not fp32-exact

    ours = "model.layers.0.self_attn.q_proj.lora_B.weight"
    enc = ok("encodings", "show", "ad0", "--base", "q", "--tensor", ours, "--json").json["param_encodings"][ours]
    bad = {ours: {"dtype": "INT", "bw": 8, "is_sym": True, "enc_type": "PER_CHANNEL",
                  "scale": [e["scale"] / 20 for e in enc], "offset": [-128] * len(enc)}}  # fmt: skip
    (tmp / "bad.encodings").write_text(json.dumps(bad))
    ok("encodings", "import", "ad0", tmp / "bad.encodings", "--base", "q", "--allow-clip")
    ok("build", "--base", "q", "-o", tmp / "bad")
    ok("plan", "--base", "q", "-o", tmp / "bad" / "plan.json")
    r = invoke("verify", "--plan", tmp / "bad" / "plan.json", "--json")
    assert r.exit_code == 5, r.stdout
    rows = {x["adapter"]: x for x in r.json["details"]["adapters"]}
    assert not rows["ad0@1"]["ok"] and rows["ad1@1"]["ok"]
    assert rows["ad0@1"]["delta_cosine"] < 0.999 < rows["ad1@1"]["delta_cosine"]  # the adapter's own share shows it


def test_fake_quantizer_matches_the_encoding_math():
    """The simulation's fake quantizer (ONNX ops) and weight quantization equal the AIMET formula
    ``scale * (clip(round(x / scale) - offset, 0, 2^bw - 1) + offset)``, per tensor and per channel."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from loramgr.quantsim import fake_quantized, quantized_value

    x = np.linspace(-3, 5, 64, dtype=np.float32).reshape(1, 64)
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 64])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    e = {"bitwidth": 8, "dtype": "int", "scale": 0.01, "offset": -10, "min": -0.1, "max": 2.45}
    assert fake_quantized(m, {"y": [e], "x": [e]}) == 2
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    def fq(v):
        return e["scale"] * (np.clip(np.round(v / e["scale"]) - e["offset"], 0, 255) + e["offset"])

    assert np.allclose(got, fq(np.maximum(fq(x), 0)), atol=1e-6)
    w = np.random.default_rng(0).standard_normal((4, 3))
    per_ch = [{"bitwidth": 8, "scale": s, "offset": -128} for s in (0.01, 0.02, 0.03)]
    q = quantized_value(w, per_ch)
    assert np.allclose(q[:, 1], 0.02 * (np.clip(np.round(w[:, 1] / 0.02) + 128, 0, 255) - 128))


def test_aimet_encodings_reach_the_qairt_importers_quant_overrides(tmp_path):
    """The qairt backend (against the stand-in SDK the tests make, not Qualcomm's) hands the importer
    each adapter's AIMET encodings as its quant_overrides: the inner activations included."""
    from loramgr.formats.encodings import load
    from tests.standin_sdk import make_standin_sdk

    sdk = make_standin_sdk(tmp_path / "qairt-standin")
    tiny_llama().save_pretrained(tmp_path / "hf")
    peft_adapter(tiny_llama(), tmp_path / "ad0", seed=20, r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"])
    ok("base", "export", tmp_path / "hf", "--name", "q", "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--graphs", f"prefill={S}", "--context-len", "16", "--quantized-lora", "8", "--sdk-version", "2.28.0",
       "-o", tmp_path / "onnx")  # fmt: skip
    ok("register", tmp_path / "ad0", "--name", "ad0")
    ok("validate", "ad0", "--base", "q")
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"input_ids": [(7 * i + j) % 128 for j in range(S)]}) + "\n" for i in range(6)))
    ok("calibrate", "--base", "q", "--all", "--data", data, "--engine", "aimet")
    ok("build", "--base", "q", "--backend", "qairt", "--sdk-root", sdk, "-o", tmp_path / "out")
    overrides = load(tmp_path / "out" / "qairt" / "prefill" / "ad0_v1.encodings")
    assert set(overrides["activation_encodings"]) == set(_acts("ad0")) and len(overrides["param_encodings"]) == 8


def test_quantized_htp_target_takes_aimets_ranges(tmp_path):
    """`build --backend qnn-ep --precision qdq-u16u8` after `calibrate --engine aimet`: the QDQ model the
    target compiles takes, for every activation with stored encodings, the union of the base's and the
    adapters' AIMET ranges (one QDQ model serves every adapter); verify on HTP (x86 simulation) passes."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import numpy_helper

    from loramgr.registry.api import Registry
    from loramgr.sections.backends import qdq

    tiny_llama().save_pretrained(tmp_path / "hf")
    for i in range(2):
        peft_adapter(
            tiny_llama(), tmp_path / f"ad{i}", seed=30 + i, r=R, lora_alpha=16, target_modules=["q_proj", "v_proj"]
        )
    ok("base", "export", tmp_path / "hf", "--name", "f", "--target-modules", "q_proj,v_proj", "--max-rank", "16",
       "--graphs", f"prefill={S}", "--context-len", "16", "-o", tmp_path / "onnx")  # fmt: skip
    for i in range(2):
        ok("register", tmp_path / f"ad{i}", "--name", f"ad{i}")
        ok("validate", f"ad{i}", "--base", "f")
    data = tmp_path / "calib.jsonl"
    data.write_text(
        "".join(json.dumps({"input_ids": [(5 * i + 3 * j) % 128 for j in range(S)]}) + "\n" for i in range(8))
    )
    ok("calibrate", "--base", "f", "--all", "--data", data, "--engine", "aimet", "--scheme", "w8a16")

    reg = Registry()
    base = reg.base("f")
    sets = [reg.encodings.get(base.id, None), *(reg.encodings.get(base.id, reg.adapter(f"ad{i}").id) for i in range(2))]
    ranges = qdq.stored_ranges(sets)
    m = onnx.load(str(tmp_path / "onnx" / "prefill.onnx"))
    qdq.clamp_mask(m, qdq.MASK_FILL["qdq-u16u8"])
    onnx.save(m, str(tmp_path / "src.onnx"), save_as_external_data=True, location="src.data")
    x = np.arange(S, dtype=np.int64)[None]
    feeds = [{"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": x}]
    taken = qdq.quantize_graph(
        tmp_path / "src.onnx", tmp_path / "q.onnx", feeds, "qdq-u16u8", base.alpha_tensor, ranges
    )
    assert taken > 50
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    checked = 0
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in ranges and ".lora_" not in n.input[0]:
            lo, hi = ranges[n.input[0]]
            want = (max(hi, 0.0) - min(lo, 0.0)) / 65535
            assert abs(float(inits[n.input[1]].ravel()[0]) - want) <= 1e-4 * want, n.input[0]  # float32 math
            checked += 1
    assert checked > 20

    ok(
        "build",
        "--base",
        "f",
        "--backend",
        "qnn-ep",
        "--target",
        "sm8750",
        "--precision",
        "qdq-u16u8",
        "-o",
        tmp_path / "out",
    )
    ok("plan", "--base", "f")
    v = ok("verify", "--plan", tmp_path / "out" / "plan.json", "--device", "htp", "--target", "sm8750", "--json").json
    assert v["ok"] and all(r["cosine"] >= 0.99 for r in v["adapters"]), v
