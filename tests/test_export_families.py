"""`base export` through the generic path (the model's own forward) for each family people ship on
device, tiny and random: zero-LoRA logits equal HF, a PEFT adapter on the family's usual targets
equals `PeftModel.from_pretrained`, and `loramgr run` (prefill + decode through the KV cache, past
the sliding window) gives the greedy tokens of HF's own full forward. Plus the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loramgr.export.tiny import FAMILIES, peft_adapter, tiny_family
from tests.conftest import invoke
from tests.test_export import hf_greedy, prefill_logits, runner, same_greedy

pytestmark = pytest.mark.slow
S, CTX = 6, 24
PROMPT = [3, 17, 42, 5, 99]
STEPS = 12  # 5 + 12 positions: well past every window of 3


def export(hf: Path, out: Path, targets: tuple[str, ...], *extra: str) -> dict:
    r = invoke(
        "base", "export", hf, "--name", "b", "--target-modules", ",".join(targets), "--max-rank", "16",
        "--graphs", f"prefill={S},decode=1", "--context-len", str(CTX), "-o", out, "--json", *extra,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return r.json["export"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_family_matches_hf_and_peft(family, tmp_path):
    from peft import PeftModel

    targets = FAMILIES[family][3]
    tiny_family(family).save_pretrained(tmp_path / "hf")
    man = export(tmp_path / "hf", tmp_path / "onnx", targets)
    assert man["family"] == "generic" and man["model_type"] == tiny_family(family).config.model_type
    hf = tiny_family(family)
    ids = np.array([PROMPT + [7]], np.int64)
    with torch.no_grad():
        ref0 = hf(torch.tensor(ids)).logits.numpy()
    got0 = prefill_logits(runner(tmp_path / "onnx" / "prefill.onnx"), ids)
    assert np.abs(got0 - ref0).max() < 1e-4

    peft_adapter(tiny_family(family), tmp_path / "ad", seed=3, r=8, lora_alpha=16, target_modules=list(targets))
    for step in (
        ("register", tmp_path / "ad", "--name", "ad"),
        ("validate", "ad", "--base", "b"),
        ("build", "--base", "b", "-o", tmp_path / "out"),
        ("plan", "--base", "b"),
    ):
        r = invoke(*step)
        assert r.exit_code == 0, (step, r.stdout, r.stderr)
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import LoraSession

    s = LoraSession(Plan.load(tmp_path / "out" / "plan.json"), graph="prefill")
    s.apply("ad")
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(S)[None]}
    got = np.asarray(s.run(feeds)[0])
    pm = PeftModel.from_pretrained(tiny_family(family), str(tmp_path / "ad")).eval()
    with torch.no_grad():
        ref = pm(torch.tensor(ids)).logits.numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert np.abs(ref - ref0).max() > 1e-3  # the adapter changes the outputs: the check above means something

    args = ("run", "--plan", tmp_path / "out" / "plan.json", "--input-ids", ",".join(map(str, PROMPT)))
    r = invoke(*args, "--adapter", "ad", "--steps", str(STEPS), "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["graphs"] == {"prefill": 1, "decode": 1}
    assert same_greedy(r.json["tokens"], *hf_greedy(pm, PROMPT, STEPS))
    base = invoke(*args, "--steps", str(STEPS), "--json")
    assert same_greedy(base.json["tokens"], *hf_greedy(tiny_family(family), PROMPT, STEPS))

    v = invoke("verify", "--plan", tmp_path / "out" / "plan.json", "--hf-dir", tmp_path / "hf", "--json")
    assert v.exit_code == 0 and v.json["adapters"][0]["max_abs_diff"] < 1e-4, v.stdout + v.stderr
    wl = invoke("weight-list", "--base", "b", "-o", tmp_path / "wl.txt")
    assert wl.exit_code == 0, wl.stderr
    listed = sorted((tmp_path / "wl.txt").read_text().split())
    points = [p for p, m in tiny_family(family).named_modules() if p.rsplit(".", 1)[-1] in targets]
    assert points and listed == sorted(f"{p}.lora_{x}.weight" for p in points for x in "AB")
    assert {p.rsplit(".", 1)[-1] for p in points} == set(targets)


def test_sliding_window_parts_chain_exactly(tmp_path):
    """Gemma 2 split into parts (embeddings / layers / head) gives the single graph's logits and
    tokens: the part boundaries of the generic path hand over the exact hidden states."""
    tiny_family("gemma2").save_pretrained(tmp_path / "hf")
    one = export(tmp_path / "hf", tmp_path / "one", ("q_proj", "v_proj"))
    many = export(tmp_path / "hf", tmp_path / "many", ("q_proj", "v_proj"), "--max-part-bytes", "150KB")
    assert len(one["parts"]) == 1 and len(many["parts"]) >= 3
    assert not many["parts"][0]["layers"][1] and many["parts"][-1]["head"]

    def chain(d: Path, man: dict, kind: str) -> list:
        return [runner(d / g["file"]) for g in man["graphs"] if g["kind"] == kind]

    ids = np.array([PROMPT + [7]], np.int64)
    a = prefill_logits(chain(tmp_path / "one", one, "prefill"), ids)
    b = prefill_logits(chain(tmp_path / "many", many, "prefill"), ids)
    assert np.abs(a - b).max() < 1e-5
    from loramgr.runtime.generate import greedy

    ta = greedy(chain(tmp_path / "one", one, "prefill"), chain(tmp_path / "one", one, "decode"), PROMPT, 10).tokens
    tb = greedy(chain(tmp_path / "many", many, "prefill"), chain(tmp_path / "many", many, "decode"), PROMPT, 10).tokens
    assert ta == tb


def test_generic_path_refusals(tmp_path):
    """Exit 2 with the reason, before any weight is read: an encoder-decoder, a target that is not
    nn.Linear, a name that matches nothing (listing what does), bidirectional attention."""

    def run(d: Path, targets: str) -> object:
        return invoke("base", "export", d, "--name", "b", "--target-modules", targets, "--max-rank", "4", "-o", d / "o")

    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1}))
    r = run(t5, "q")
    assert r.exit_code == 2 and "t5" in r.stderr and "decoder-only" in r.stderr and "\n" not in r.stderr.strip()

    llama = tmp_path / "llama"
    tiny_family("llama").save_pretrained(llama)
    r = run(llama, "q_proj,input_layernorm")
    assert r.exit_code == 2 and "input_layernorm" in r.stderr and "RMSNorm" in r.stderr and "nn.Linear" in r.stderr
    r = run(llama, "qkv_proj")
    assert r.exit_code == 2 and "qkv_proj" in r.stderr and "q_proj" in r.stderr and "gate_proj" in r.stderr

    gemma = tmp_path / "gemma"
    tiny_family("gemma3").save_pretrained(gemma)
    cfg = json.loads((gemma / "config.json").read_text())
    (gemma / "config.json").write_text(json.dumps(cfg | {"use_bidirectional_attention": True}))
    r = run(gemma, "q_proj")
    assert r.exit_code == 2 and "bidirectional" in r.stderr
    assert not (gemma / "o").exists() and not (llama / "o").exists()


def test_demo_model_gives_a_newcomer_a_model_to_try(tmp_path):
    """`loramgr demo-model FAMILY -o DIR`: a tiny seeded HF model and PEFT adapters, which `base export`
    and `register` then take as they are; unknown families and non-empty directories are refused."""
    r = invoke("demo-model", "qwen3", "-o", tmp_path / "try", "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json
    assert res["family"] == "qwen3" and len(res["adapters"]) == 2
    export(Path(res["model"]), tmp_path / "onnx", tuple(res["target_modules"]))
    for i, ad in enumerate(res["adapters"]):
        assert invoke("register", ad, "--name", f"a{i}").exit_code == 0
        assert invoke("validate", f"a{i}", "--base", "b").exit_code == 0
    a0 = json.loads((Path(res["adapters"][0]) / "adapter_config.json").read_text())
    a1 = json.loads((Path(res["adapters"][1]) / "adapter_config.json").read_text())
    assert a0["target_modules"] and sorted(a0["target_modules"]) == sorted(a1["target_modules"])
    r = invoke("demo-model", "nope", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "qwen3" in r.stderr
    assert invoke("demo-model", "llama", "-o", tmp_path / "try").exit_code == 2  # not empty


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 16},
    ],
    ids=lambda r: r["rope_type"],
)  # fmt: skip
def test_every_rope_type_exports_exactly(rope, tmp_path):
    """Each `rope_type` transformers defines (longrope: the family test and the switch test below)
    gives HF's prefill logits, and the KV-cache decode gives HF's tokens."""
    hf = tiny_family("llama", rope_scaling=rope)
    hf.save_pretrained(tmp_path / "hf")
    export(tmp_path / "hf", tmp_path / "onnx", ("q_proj",))
    ids = np.array([PROMPT + [7]], np.int64)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(prefill_logits(runner(tmp_path / "onnx" / "prefill.onnx"), ids) - ref).max() < 1e-4
    from loramgr.runtime.generate import greedy

    got = greedy([runner(tmp_path / "onnx" / "prefill.onnx")], [runner(tmp_path / "onnx" / "decode.onnx")], PROMPT, 10)
    assert same_greedy(got.tokens, *hf_greedy(hf, PROMPT, 10))


def test_longrope_decode_recomputes_the_cache_at_the_switch_as_hf(tmp_path, monkeypatch):
    """Phi-3.5's longrope past `original_max_position_embeddings` (8 here): HF's generate recomputes
    the whole cache with the long factors there; loramgr's runtime does the same through the graphs'
    `rope_long` input, so every logits row, before and after the switch, is HF's full forward's."""
    from loramgr.runtime import generate

    hf = tiny_family("phi3_longrope")
    hf.save_pretrained(tmp_path / "hf")
    man = export(tmp_path / "hf", tmp_path / "onnx", ("qkv_proj", "o_proj"))
    assert man["rope_switch"] == 8
    pre, dec = [runner(tmp_path / "onnx" / "prefill.onnx")], [runner(tmp_path / "onnx" / "decode.onnx")]
    steps = 12  # positions 5..16: well past the switch
    ref_tokens, ref_rows = hf_greedy(hf, PROMPT, steps)
    with torch.no_grad():
        gen = hf.generate(torch.tensor([PROMPT]), max_new_tokens=steps, do_sample=False, pad_token_id=0)
    assert gen[0, len(PROMPT) :].tolist() == ref_tokens  # HF's generate (cache + recompute) = its full forward

    feed = PROMPT + ref_tokens  # teacher-forced on HF's tokens: the rows compare position by position
    got = generate.greedy(pre, dec, feed[: len(PROMPT)], steps)
    assert same_greedy(got.tokens, ref_tokens, ref_rows)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, ref_rows, strict=True)) < 1e-4

    monkeypatch.setattr(generate, "_recompute", lambda *a: None)  # keys cached before the switch stay short
    stale = generate.greedy(pre, dec, PROMPT, steps)
    after = len(feed) - len(PROMPT)
    assert max(float(np.abs(a - b).max()) for a, b in zip(stale.logits[:after], ref_rows, strict=True)) > 1e-3


def test_second_round_refusals_are_one_line_exit_2(tmp_path, monkeypatch):
    """LoRA on fused MoE experts (3D weights, not nn.Linear) is refused before any weight exists;
    a model that hands its layers more than `[1, tokens, hidden]` (Gemma 3n's AltUp streams) cannot be
    cut into parts; an exporter failure inside torch is exit 2 naming the model and the innermost
    reason, never exit 1."""
    moe = tmp_path / "moe"
    tiny_family("mixtral").config.save_pretrained(moe)  # config only: no weights to read
    r = invoke("base", "export", moe, "--name", "b", "--target-modules", "q_proj,experts", "--max-rank", "4",
               "-o", moe / "o")  # fmt: skip
    assert r.exit_code == 2 and "experts" in r.stderr and "nn.Linear" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (moe / "o").exists()

    g3n = tmp_path / "g3n"
    tiny_family("gemma3n").save_pretrained(g3n)
    r = invoke("base", "export", g3n, "--name", "b", "--target-modules", "q_proj", "--max-rank", "4",
               "--max-part-bytes", "150KB", "--graphs", "prefill=6", "-o", g3n / "o")  # fmt: skip
    assert r.exit_code == 2 and "one part" in r.stderr and "gemma3n" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (g3n / "o").exists()

    # a model that keeps state outside the attention cache (RecurrentGemma's recurrent layers): decode
    # graphs would run and be wrong, so they are refused; prefill graphs alone export
    import transformers

    rg = tmp_path / "rg"
    cfg = transformers.RecurrentGemmaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, head_dim=16, lru_width=64, attention_window_size=8, pad_token_id=0, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.RecurrentGemmaForCausalLM(cfg).save_pretrained(rg)
    base = ("base", "export", rg, "--name", "rg", "--target-modules", "q_proj,v_proj", "--max-rank", "4")
    r = invoke(*base, "--graphs", "prefill=6,decode=1", "--context-len", "16", "-o", rg / "o")
    assert r.exit_code == 2 and "state outside the attention cache" in r.stderr and not (rg / "o").exists(), r.stderr
    assert invoke(*base, "--graphs", "prefill=6", "-o", rg / "o").exit_code == 0

    def broken(*a, **k):
        try:
            raise NotImplementedError("No ONNX function found for aten.frobnicate")
        except NotImplementedError as inner:
            raise RuntimeError("Failed to convert the exported program to an ONNX model.\n- advice\n") from inner

    monkeypatch.setattr(torch.onnx, "export", broken)
    llama = tmp_path / "llama"
    tiny_family("llama").save_pretrained(llama)
    r = invoke("base", "export", llama, "--name", "b", "--target-modules", "q_proj", "--max-rank", "4",
               "--graphs", "prefill=6", "-o", llama / "o")  # fmt: skip
    assert r.exit_code == 2 and "aten.frobnicate" in r.stderr and "'llama'" in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1 and not (llama / "o").exists()


def test_an_exported_graph_that_does_not_reproduce_the_model_is_refused(tmp_path, monkeypatch):
    """Every graph is run once on ONNX Runtime against the model's own forward before the export
    succeeds: a graph whose ONNX translation computes something else (here: an Add turned into a Sub
    after the trace) is exit 2 naming the graph and the output, and nothing is left behind."""
    import loramgr.export.htp_clean as hc

    real = hc.htp_clean

    def skewed(model):
        done = real(model)
        node = next(n for n in model.graph.node if n.op_type == "Add")
        node.op_type = "Sub"
        return done

    monkeypatch.setattr(hc, "htp_clean", skewed)
    tiny_family("llama").save_pretrained(tmp_path / "hf")
    r = invoke("base", "export", tmp_path / "hf", "--name", "b", "--target-modules", "q_proj", "--max-rank", "4",
               "--graphs", "prefill=6", "-o", tmp_path / "o")  # fmt: skip
    assert r.exit_code == 2 and "prefill.onnx does not reproduce the model" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
