"""validate: one test per problem code, group rule, recording, weight-list."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loramgr.testing import synth
from tests.conftest import invoke


@pytest.fixture
def base(tiny):
    assert invoke("base", "register", tiny.base, "--name", "tiny", "--max-rank", "16").exit_code == 0
    return tiny


def registered(d, *extra):
    r = invoke("register", d, "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return r.json


def codes(report, ref):
    return {p["code"] for a in report["adapters"] if a["adapter"] == ref for p in a["problems"]}


def check_refused(ref, code, needles=()):
    before = invoke("list", "--json").json
    r = invoke("validate", ref, "--base", "tiny", "--json")
    assert r.exit_code == 5, r.stderr
    rep = r.json
    assert code in codes(rep, ref), rep
    msg = json.dumps(rep)
    for n in needles:
        assert n in msg
    assert r.stderr.startswith("loramgr: error:") and code in r.stderr
    after = invoke("list", "--json").json
    assert [a["status"] for a in after] == [a["status"] for a in before]  # failure changes no status
    return rep


def test_compatible_is_recorded(base):
    d, _ = base.adapter("ok", r=8)
    registered(d)
    r = invoke("validate", "ok", "--base", "tiny", "--json")
    assert r.exit_code == 0 and r.json["compatible"]
    warns = {w["code"] for w in r.json["adapters"][0]["warnings"]}
    assert "rank_padded" in warns
    assert invoke("show", "ok", "--json").json["status"] == "validated"
    assert invoke("validate", "ok", "--base", "tiny").stdout.startswith("ok@1: compatible with tiny@1")


def test_rank_exceeds_max(base):
    d, _ = base.adapter("big", r=32)
    registered(d)
    check_refused("big@1", "rank_exceeds_max", ["rank 32", "max rank 16"])


def test_target_missing(base):
    d, _ = base.adapter("kp", mods=("q_proj", "k_proj"))
    registered(d)
    rep = check_refused("kp@1", "target_missing", ["k_proj"])
    assert {w["code"] for w in rep["adapters"][0]["warnings"]} >= {"zero_filled"}
    # the history keeps the warnings with the problems (it once recorded a warned run as problems=[])
    ev = [e for e in invoke("history", "kp", "--json").json if e["action"] == "validate"][-1]["details"]
    assert ev["problems"] == ["target_missing"] and "zero_filled" in ev["warnings"]


def test_shape_mismatch(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8, d=32)
    registered(synth.write_adapter(tmp_path / "narrow", t, synth.peft_config(8, 16, ["q_proj", "v_proj"])))
    check_refused("narrow@1", "shape_mismatch", ["in 32", "in 64"])
    # the table shows the message as text: rich must not take "[in 32, out 64]" for markup
    shown = invoke("validate", "narrow@1", "--base", "tiny").stdout
    assert "[in 32" in shown and "[in 64" in shown, shown


def test_precision_loss_on_fp16_base(tmp_path):
    p = tmp_path / "b16.onnx"
    synth.write_base(p, synth.module_paths(), dtype=np.float16)
    assert invoke("base", "register", p, "--name", "tiny").exit_code == 0
    t = synth.adapter_tensors(synth.module_paths(), 8)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"][0, 0] = 1e5
    registered(synth.write_adapter(tmp_path / "hot", t, synth.peft_config(8, 16, ["q_proj", "v_proj"])))
    check_refused("hot@1", "precision_loss", ["overflows fp16"])


def test_dora(base):
    d, _ = base.adapter("dora", use_dora=True)
    registered(d)
    check_refused("dora@1", "dora")


def test_layer_replication_is_named_as_such(base):
    """PEFT's layer_replication adapters target layer copies the base graph does not have: the problem
    names that cause (it was once only target_missing, with a re-export hint that could not help)."""
    d, _ = base.adapter("rep", layer_replication=[[0, 2], [1, 2]])
    registered(d)
    rep = check_refused("rep@1", "layer_replication", ["layer_replication"])
    assert "retrain without it" in json.dumps(rep)


def test_dora_magnitude_tensor(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = np.ones(64, np.float32)
    registered(synth.write_adapter(tmp_path / "mag", t, synth.peft_config(8, 16, ["q_proj", "v_proj"])))
    check_refused("mag@1", "dora", ["lora_magnitude_vector"])


def test_modules_to_save(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    t["base_model.model.lm_head.weight"] = np.ones((4, 64), np.float32)
    registered(
        synth.write_adapter(tmp_path / "mts", t, synth.peft_config(8, 16, ["q_proj"], modules_to_save=["lm_head"]))
    )
    check_refused("mts@1", "modules_to_save", ["lm_head"])


def test_lora_bias(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"] = np.ones(64, np.float32)
    registered(synth.write_adapter(tmp_path / "bias", t, synth.peft_config(8, 16, ["q_proj"], bias="lora_only")))
    check_refused("bias@1", "lora_bias")


def test_alpha_unknown(base):
    d, _ = base.adapter("noalpha", config=False)
    registered(d / "adapter_model.safetensors", "--name", "noalpha")
    check_refused("noalpha@1", "alpha_unknown", ["--lora-alpha"])


def test_unmatched_tensor(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    t["something.else"] = np.ones(3, np.float32)
    registered(synth.write_adapter(tmp_path / "extra", t, synth.peft_config(8, 16, ["q_proj"])))
    check_refused("extra@1", "unmatched_tensor", ["something.else"])


def test_missing_partner(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    del t["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    registered(synth.write_adapter(tmp_path / "half", t, synth.peft_config(8, 16, ["q_proj"])))
    check_refused("half@1", "missing_partner", ["layers.1.self_attn.v_proj.lora_A"])


def test_rank_pair_mismatch(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = np.ones((64, 4), np.float32)
    registered(synth.write_adapter(tmp_path / "rk", t, synth.peft_config(8, 16, ["q_proj"])))
    check_refused("rk@1", "rank_pair_mismatch")


def test_unsupported_dtype(base, tmp_path):
    t = {k: (v * 100).astype(np.int8) for k, v in synth.adapter_tensors(base.mps, 8).items()}
    registered(synth.write_adapter(tmp_path / "i8", t, synth.peft_config(8, 16, ["q_proj"])))
    check_refused("i8@1", "unsupported_dtype")


def test_retired_adapter(base):
    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.registry.models import AdapterRow

    d, _ = base.adapter("old")
    registered(d)
    reg = Registry(Settings.resolve())
    with reg.session(write=True) as s:
        s.query(AdapterRow).filter_by(name="old").update({"status": "retired"})
    check_refused("old@1", "retired")


def test_all_problems_at_once(base):
    d, _ = base.adapter("both", r=32, mods=("q_proj", "k_proj"), use_dora=True)
    registered(d)
    rep = check_refused("both@1", "rank_exceeds_max")
    assert codes(rep, "both@1") >= {"rank_exceeds_max", "target_missing", "dora"}


def test_prefix_mapping_transformer_vs_model(base, tmp_path):
    t = {
        k.replace("base_model.model.model.", "base_model.model.transformer."): v
        for k, v in synth.adapter_tensors(base.mps, 8).items()
    }
    registered(synth.write_adapter(tmp_path / "pref", t, synth.peft_config(8, 16, ["q_proj", "v_proj"])))
    r = invoke("validate", "pref", "--base", "tiny", "--json")
    assert r.exit_code == 0, r.stdout
    assert "prefix_mapped" in {w["code"] for w in r.json["adapters"][0]["warnings"]}


def test_adapter_name_segment(base, tmp_path):
    t = synth.adapter_tensors(base.mps, 8, adapter_name="default")
    registered(synth.write_adapter(tmp_path / "seg", t, synth.peft_config(8, 16, ["q_proj", "v_proj"])))
    assert invoke("validate", "seg", "--base", "tiny").exit_code == 0


def test_group_all(base):
    for name, r in (("g4", 4), ("g8", 8), ("g16", 16)):
        d, _ = base.adapter(name, r=r, seed=r)
        registered(d, "--base", "tiny")
    r = invoke("validate", "--base", "tiny", "--all", "--json")
    assert r.exit_code == 0, r.stdout
    g = r.json["group"]
    assert g["effective_max_rank"] == 16 and sorted(g["adapters"]) == ["g16@1", "g4@1", "g8@1"]
    d, _ = base.adapter("g32", r=32, seed=9)
    registered(d, "--base", "tiny")
    r = invoke("validate", "--base", "tiny", "--all", "--json")
    assert r.exit_code == 5 and not r.json["compatible"]


def test_validate_needs_refs_or_all(base):
    assert invoke("validate", "--base", "tiny").exit_code == 2
    assert invoke("validate", "x", "--base", "nope").exit_code == 3


def test_weight_list_exact_and_stable(base, tmp_path):
    out = tmp_path / "wl.txt"
    assert invoke("weight-list", "--base", "tiny", "-o", out).exit_code == 0
    want = []
    for mp in base.mps:
        want += [f"{mp}.lora_A.weight", f"{mp}.lora_B.weight"]
    assert out.read_text().splitlines() == want and out.read_bytes().endswith(b"\n")
    import onnx

    graph_inputs = {i.name for i in onnx.load(str(base.base)).graph.input if ".lora_" in i.name}
    assert set(out.read_text().splitlines()) == graph_inputs
    first = out.read_bytes()
    invoke("weight-list", "--base", "tiny", "-o", out)
    assert out.read_bytes() == first
    r = invoke("weight-list", "--base", "tiny", "--include-alpha")
    assert r.stdout.splitlines()[-1] == "lora_alpha"
    r = invoke("weight-list", "--base", "tiny", "--format", "json")
    assert r.json["graphs"]["base"] == want


def test_weight_list_per_graph_when_graphs_differ(tmp_path):
    synth.write_base(tmp_path / "p0.onnx", synth.module_paths(layers=1))
    m = [f"model.layers.1.self_attn.{x}" for x in ("q_proj", "v_proj")]
    synth.write_base(tmp_path / "p1.onnx", m)
    assert (
        invoke(
            "base",
            "register",
            "--name",
            "parts",
            "--graph",
            f"part0={tmp_path / 'p0.onnx'}",
            "--graph",
            f"part1={tmp_path / 'p1.onnx'}",
        ).exit_code
        == 0
    )
    res = invoke("weight-list", "--base", "parts", "-o", tmp_path / "wl.txt", "--json").json
    assert not res["shared"]
    assert (tmp_path / "wl.part0.txt").read_text().splitlines()[0] == "model.layers.0.self_attn.q_proj.lora_A.weight"
    assert (tmp_path / "wl.part1.txt").read_text().splitlines()[0] == "model.layers.1.self_attn.q_proj.lora_A.weight"


def test_parse_key_classifies_peft_layouts():
    from loramgr.lora.mapping import AttachmentIndex, parse_key, target_matches

    k = parse_key("base_model.model.model.embed_tokens.lora_embedding_A")
    assert (k.module, k.role, k.embedding) == ("model.embed_tokens", "A", True)
    k = parse_key("base_model.model.model.embed_tokens.lora_embedding_B.default")
    assert (k.module, k.role) == ("model.embed_tokens", "B")
    assert parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight").role == "A"
    assert (
        parse_key("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight").module == "transformer.h.0.attn.c_attn"
    )
    assert parse_key("base_model.model.x.q_proj.lora_magnitude_vector").role == "dora_magnitude"
    assert parse_key("base_model.model.x.q_proj.lora_magnitude_vector.default.weight").role == "dora_magnitude"
    assert parse_key("base_model.model.lm_head.modules_to_save.default.weight").role == "full_weight"
    assert parse_key("base_model.model.x.q_proj.lora_B.bias").role == "lora_bias"
    assert parse_key("weird").role == "unknown"
    idx = AttachmentIndex(
        ["model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]
    )
    assert idx.find("transformer.layers.0.self_attn.q_proj") == "model.layers.0.self_attn.q_proj"
    assert idx.find("model.h.0.mlp.c_proj") == "transformer.h.0.mlp.c_proj"
    assert target_matches("transformer.h.0.attn.c_proj", ["c_proj"]) and target_matches(
        "transformer.h.0.mlp.c_proj", ["c_proj"]
    )
    assert target_matches("model.layers.3.self_attn.q_proj", r".*layers\.3\..*q_proj")


def test_embedding_lora_prepares_like_peft():
    """lora_embedding_A [r, vocab] / lora_embedding_B [dim, r]: the graph gathers rows of A.T. The
    reference is real PEFT: an nn.Embedding wrapped by ``get_peft_model``, its output with the adapter
    minus its output without."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loramgr.formats.peft import Scaling
    from loramgr.lora.prepare import canonical_pair

    class Emb(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(x)

    torch.manual_seed(0)
    model = get_peft_model(
        Emb(), LoraConfig(r=4, lora_alpha=8, target_modules=["embed"], init_lora_weights=False)
    ).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    A = next(v for k, v in sd.items() if "lora_embedding_A" in k)
    B = next(v for k, v in sd.items() if "lora_embedding_B" in k)
    ids = torch.tensor([1, 7, 3])
    with torch.no_grad():
        with_lora = model(ids).numpy()
        with model.disable_adapter():
            base = model(ids).numpy()
    ca, cb = canonical_pair(A, B, Scaling(8.0).factor("embed", 4), 8, np.float32)
    assert np.abs(ca[ids.numpy()] @ cb - (with_lora - base)).max() < 1e-5
