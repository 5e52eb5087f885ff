"""`base export` on tiny Llama and GPT-2 models made here: zero-LoRA parity with HF, PEFT adapters
fed as graph inputs match PEFT, greedy decoding with the KV cache matches HF, parts chain exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from loramgr.runtime.generate import Runner, greedy
from tests.conftest import invoke
from tests.hf_models import peft_adapter, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow
S, CTX = 8, 24


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so)


def runner(path: Path, lora: dict[str, np.ndarray] | None = None, alpha: float = 1.0) -> Runner:
    s = session(path)
    extra = {k: v for k, v in (lora or {}).items() if k in {i.name for i in s.get_overridable_initializers()}}
    has_alpha = "lora_alpha" in {i.name for i in s.get_overridable_initializers()}

    def fn(feeds):
        f = dict(feeds) | extra
        if has_alpha:
            f["lora_alpha"] = np.array([alpha], np.float32)
        return s.run(None, f)

    return Runner.from_session(s, fn)


def prefill_logits(r: Runner | list[Runner], ids: np.ndarray) -> np.ndarray:
    from loramgr.runtime.generate import _run_chain

    n = ids.shape[1]
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
    }
    return _run_chain(r if isinstance(r, list) else [r], feeds, {})


def hf_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Reference: full forward (no cache) per step."""
    seq, toks, rows = list(prompt), [], []
    with torch.no_grad():
        for _ in range(steps):
            row = model(input_ids=torch.tensor([seq])).logits[0, -1].numpy()
            t = int(row.argmax())
            toks.append(t)
            rows.append(row)
            seq.append(t)
    return toks, rows


def same_greedy(tokens: list[int], ref_tokens: list[int], ref_rows: list[np.ndarray], tie: float = 1e-4) -> bool:
    """Equal token streams, except that a divergence is allowed at a near-tie of the reference
    logits (random tiny models have almost flat logits; 1e-7 numeric noise may flip such a tie)."""
    for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=True)):
        if a != b:
            return abs(float(ref_rows[i][a]) - float(ref_rows[i][b])) < tie
    return len(tokens) == len(ref_tokens)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from loramgr.export import ExportOptions, export_base

    tmp = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(tmp / "hf")
    man = export_base(
        tmp / "hf",
        tmp / "onnx",
        ExportOptions(targets=["q_proj", "v_proj"], max_rank=16, graphs=f"prefill={S},decode=1", context_len=CTX),
    )
    return tmp, man


def register_and_prepare(tmp: Path, onnx_dir: Path, man: dict, adapter_dir: Path) -> dict[str, np.ndarray]:
    from loramgr.config import Settings
    from loramgr.lora.inputs import prepared_inputs
    from loramgr.registry.api import Registry

    args = [a for g in man["graphs"] for a in ("--graph", f"{g['name']}={onnx_dir / g['file']}")]
    r = invoke("base", "register", "--name", "exp", *args, "--allow-empty")
    assert r.exit_code == 0, r.stderr
    assert invoke("register", adapter_dir, "--name", "ad").exit_code == 0
    v = invoke("validate", "ad", "--base", "exp", "--json")
    assert v.exit_code == 0, v.stdout
    reg = Registry(Settings.resolve())
    return prepared_inputs(reg.adapter("ad"), reg.base("exp"))


def test_llama_export_signature_and_weights_shared(llama):
    tmp, man = llama
    assert [g["name"] for g in man["graphs"]] == ["prefill", "decode"] and len(man["parts"]) == 1
    want = {
        f"model.layers.{i}.self_attn.{m}.lora_{x}.weight" for i in range(2) for m in ("q_proj", "v_proj") for x in "AB"
    }
    for g in man["graphs"]:
        m = onnx.load(str(tmp / "onnx" / g["file"]), load_external_data=False)
        ins = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        assert want <= set(ins) and ins["lora_alpha"] == [1]
        assert ins["model.layers.0.self_attn.q_proj.lora_A.weight"] == [64, 16]
        assert ins["model.layers.1.self_attn.v_proj.lora_B.weight"] == [16, 32]  # 2 kv heads x 16
        assert not [n for n in m.graph.node if n.op_type == "Dropout"]
        inits = {t.name for t in m.graph.initializer}
        assert want <= inits  # zero defaults
    dec = onnx.load(str(tmp / "onnx" / "decode.onnx"), load_external_data=False)
    past = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    assert past["past_key_values.1.value"] == [1, 2, CTX - 1, 16] and past["attention_mask"] == [1, CTX]
    params = sum(p.numel() * 4 for p in tiny_llama().parameters())
    data = (tmp / "onnx" / "model.data").stat().st_size
    assert data < 1.2 * params  # the two graphs' weights are written once


def test_llama_zero_lora_and_alpha_zero_equal_hf(llama, tmp_path):
    tmp, man = llama
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, S), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    got = prefill_logits(runner(tmp / "onnx" / "prefill.onnx"), ids.numpy())
    assert np.abs(got - ref).max() < 1e-4
    pm = peft_adapter(tiny_llama(), tmp_path / "ad", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    lora = register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    assert lora["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (64, 16)  # r=8 padded to 16
    with torch.no_grad():
        want = pm(input_ids=ids).logits.numpy()
    got = prefill_logits(runner(tmp / "onnx" / "prefill.onnx", lora), ids.numpy())
    assert np.abs(got - ref).max() > 1e-2  # the adapter matters ...
    assert np.abs(got - want).max() < 1e-4  # ... and matches PEFT
    off = prefill_logits(runner(tmp / "onnx" / "prefill.onnx", lora, alpha=0.0), ids.numpy())
    assert np.abs(off - ref).max() < 1e-4


def test_llama_greedy_with_kv_cache_matches_hf(llama, tmp_path):
    tmp, man = llama
    pm = peft_adapter(tiny_llama(), tmp_path / "ad", seed=5, r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    lora = register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    prompt = [5, 17, 99, 3, 42]
    for lo, model in ((None, tiny_llama()), (lora, pm)):
        want_t, want_l = hf_greedy(model, prompt, 4)
        gen = greedy([runner(tmp / "onnx" / "prefill.onnx", lo)], [runner(tmp / "onnx" / "decode.onnx", lo)], prompt, 4)
        assert same_greedy(gen.tokens, want_t, want_l)
        if gen.tokens == want_t:
            assert max(float(np.abs(a - b).max()) for a, b in zip(gen.logits, want_l, strict=True)) < 1e-4
    # a prompt longer than the prefill graph continues through the decode graph
    long = list(range(1, S + 4))
    want_t, want_l = hf_greedy(pm, long, 3)
    gen = greedy([runner(tmp / "onnx" / "prefill.onnx", lora)], [runner(tmp / "onnx" / "decode.onnx", lora)], long, 3)
    assert same_greedy(gen.tokens, want_t, want_l)
    assert float(np.abs(gen.logits[0] - want_l[0]).max()) < 1e-4


def test_llama_parts_chain_exactly(llama, tmp_path):
    from loramgr.export import ExportOptions, export_base

    tmp, _ = llama
    limit = 170_000  # a layer is 162 KB: embeddings | layer 0 | layer 1 | head
    man = export_base(
        tmp / "hf",
        tmp_path / "parts",
        ExportOptions(
            targets=["q_proj", "v_proj"],
            max_rank=16,
            graphs=f"prefill={S},decode=1",
            context_len=CTX,
            max_part_bytes=limit,
        ),
    )
    assert len(man["parts"]) >= 3
    assert all(p["data_bytes"] <= limit for p in man["parts"])
    assert json.loads((tmp_path / "parts" / "export.json").read_text())["parts"] == man["parts"]
    pre = [runner(tmp_path / "parts" / g["file"]) for g in man["graphs"] if g["kind"] == "prefill"]
    dec = [runner(tmp_path / "parts" / g["file"]) for g in man["graphs"] if g["kind"] == "decode"]
    ids = np.array([[9, 8, 7, 6, 5, 4, 3, 2]], np.int64)
    whole = prefill_logits(runner(tmp / "onnx" / "prefill.onnx"), ids)
    assert np.abs(prefill_logits(pre, ids) - whole).max() < 1e-5
    one = greedy([runner(tmp / "onnx" / "prefill.onnx")], [runner(tmp / "onnx" / "decode.onnx")], [1, 2, 3], 4)
    split = greedy(pre, dec, [1, 2, 3], 4)
    assert same_greedy(split.tokens, one.tokens, one.logits)
    # each part has its own attachment points; registering the parts works
    args = [a for g in man["graphs"] for a in ("--graph", f"{g['name']}={tmp_path / 'parts' / g['file']}")]
    r = invoke("base", "register", "--name", "parts", *args, "--allow-empty", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["attachment_points"] == 4


def test_gpt2_cli_export_registers_and_matches_peft(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "hf")
    r = invoke(
        "base",
        "export",
        tmp_path / "hf",
        "--name",
        "g2",
        "--target-modules",
        "c_attn,c_proj,c_fc",
        "--max-rank",
        "8",
        "--graphs",
        f"prefill={S}",
        "-o",
        tmp_path / "onnx",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    base = r.json["base"]
    assert base["ref"] == "g2@1" and base["attachment_points"] == 8 and base["max_rank"] == 8
    ids = torch.tensor([[1, 5, 9, 13, 2, 4, 6, 8]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert np.abs(prefill_logits(runner(tmp_path / "onnx" / "prefill.onnx"), ids.numpy()) - ref).max() < 1e-4
    pm = peft_adapter(
        tiny_gpt2(),
        tmp_path / "ad",
        r=4,
        lora_alpha=8,
        fan_in_fan_out=True,
        target_modules=["c_attn", "c_proj", "c_fc"],
    )
    from loramgr.config import Settings
    from loramgr.lora.inputs import prepared_inputs
    from loramgr.registry.api import Registry

    assert invoke("register", tmp_path / "ad", "--name", "g2ad").exit_code == 0
    assert invoke("validate", "g2ad", "--base", "g2").exit_code == 0
    reg = Registry(Settings.resolve())
    lora = prepared_inputs(reg.adapter("g2ad"), reg.base("g2"))
    with torch.no_grad():
        want = pm(input_ids=ids).logits.numpy()
    got = prefill_logits(runner(tmp_path / "onnx" / "prefill.onnx", lora), ids.numpy())
    assert np.abs(got - ref).max() > 1e-2 and np.abs(got - want).max() < 1e-4


def test_fp16_export_runs_close_to_fp32(llama, tmp_path):
    from loramgr.export import ExportOptions, export_base

    tmp, _ = llama
    export_base(
        tmp / "hf",
        tmp_path / "h",
        ExportOptions(targets=["q_proj"], max_rank=4, graphs=f"prefill={S}", precision="fp16"),
    )
    m = onnx.load(str(tmp_path / "h" / "prefill.onnx"), load_external_data=False)
    a = next(i for i in m.graph.input if i.name.endswith("q_proj.lora_A.weight"))
    assert a.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    ids = np.arange(1, S + 1, dtype=np.int64)[None]
    got = prefill_logits(runner(tmp_path / "h" / "prefill.onnx"), ids).astype(np.float32)
    want = prefill_logits(runner(tmp / "onnx" / "prefill.onnx"), ids)
    assert np.isfinite(got).all() and np.abs(got - want).max() < 2e-2


def test_unsupported_architecture_and_target(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    r = invoke("base", "export", d, "--name", "b", "--target-modules", "query", "--max-rank", "4", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "bert" in r.stderr and "llama" in r.stderr and "gpt2" in r.stderr
    tiny_gpt2().save_pretrained(tmp_path / "g")
    r = invoke(
        "base",
        "export",
        tmp_path / "g",
        "--name",
        "b",
        "--target-modules",
        "q_proj",
        "--max-rank",
        "4",
        "-o",
        tmp_path / "o",
    )
    assert r.exit_code == 2 and "c_attn" in r.stderr
    r = invoke(
        "base", "export", tmp_path, "--name", "b", "--target-modules", "q_proj", "--max-rank", "4", "-o", tmp_path / "o"
    )
    assert r.exit_code == 4 and "config.json" in r.stderr


def test_plan_run_and_verify_end_to_end(llama, tmp_path):
    """export -> register -> build --share-adapters -> plan -> `run` (greedy with KV cache) and `verify`."""
    tmp, man = llama
    pm = peft_adapter(tiny_llama(), tmp_path / "ad", seed=7, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    b = invoke("build", "--base", "exp", "--share-adapters", "-o", tmp_path / "out", "--json")
    assert b.exit_code == 0, b.stderr
    assert [a["graphs"] for a in b.json["artifacts"] if a["kind"] == "super_section"] == [["prefill", "decode"]]
    # the graphs read one external data file: the build places it once, for both
    data = [a for a in b.json["artifacts"] if a["kind"] == "graph_data"]
    assert [a["graphs"] for a in data] == [["prefill", "decode"]]
    assert sorted(p.name for p in (tmp_path / "out" / "base").iterdir()) == sorted(
        [Path(data[0]["path"]).name, "prefill.onnx", "decode.onnx"]
    )
    assert invoke("plan", "--base", "exp").exit_code == 0
    plan = tmp_path / "out" / "plan.json"
    doc = json.loads(plan.read_text())
    assert [[e["path"] for e in g["external_data"]] for g in doc["base"]["graphs"]] == [
        ["base/" + Path(data[0]["path"]).name]
    ] * 2
    prompt = [5, 17, 99, 3]
    r = invoke(
        "run", "--plan", plan, "--adapter", "ad", "--input-ids", ",".join(map(str, prompt)), "--steps", "5", "--json"
    )
    assert r.exit_code == 0, r.stderr
    assert same_greedy(r.json["tokens"], *hf_greedy(pm, prompt, 5)) and r.json["graphs"] == {"prefill": 1, "decode": 1}
    base_toks = invoke("run", "--plan", plan, "--input-ids", "5,17,99,3", "--steps", "5", "--json").json["tokens"]
    assert same_greedy(base_toks, *hf_greedy(tiny_llama(), prompt, 5))
    zero = invoke(
        "run", "--plan", plan, "--adapter", "ad", "--alpha", "0", "--input-ids", "5,17,99,3", "--steps", "5", "--json"
    ).json["tokens"]
    assert zero == base_toks
    v = invoke("verify", "--plan", plan, "--hf-dir", tmp / "hf", "--json")
    assert v.exit_code == 0, v.stdout + v.stderr
    assert v.json["mode"] == "peft" and v.json["adapters"][0]["max_abs_diff"] < 1e-4
    s = invoke("verify", "--plan", plan, "--mode", "sections", "--json")
    assert s.exit_code == 0 and s.json["adapters"][0]["max_abs_diff"] < 1e-5, s.stdout
    strict = invoke("verify", "--plan", plan, "--hf-dir", tmp / "hf", "--tolerance", "1e-12")
    assert strict.exit_code == 5 and "beyond the tolerance" in strict.stderr
    assert invoke("run", "--plan", plan, "--adapter", "nope", "--input-ids", "1").exit_code == 3
    assert invoke("run", "--plan", plan, "--input-ids", "1,x").exit_code == 2


def test_runtime_input_is_checked_against_the_plan_before_any_session(llama, tmp_path, monkeypatch):
    """Token ids beyond the vocabulary and more tokens than the KV cache holds are usage errors
    naming the limits, refused before ONNX Runtime is asked to create a session."""
    tmp, man = llama
    peft_adapter(tiny_llama(), tmp_path / "ad", seed=7, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    assert invoke("build", "--base", "exp", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "exp").exit_code == 0
    plan = tmp_path / "out" / "plan.json"

    def no_session(*a, **k):
        raise AssertionError("a session was created for a request that should have been refused")

    room = CTX - 1  # the decode graph's cache holds CTX - 1 past entries
    with monkeypatch.context() as m:
        m.setattr(ort, "InferenceSession", no_session)
        r = invoke("run", "--plan", plan, "--adapter", "ad", "--input-ids", "128")
        assert r.exit_code == 2 and "vocabulary (0 to 127)" in r.stderr, r.stderr
        r = invoke("run", "--plan", plan, "--input-ids", "1,2,3", "--steps", str(room - 1))
        assert r.exit_code == 2 and f"hold {room}" in r.stderr, r.stderr
    ok = invoke("run", "--plan", plan, "--input-ids", "1,2,3", "--steps", str(room - 2), "--json")
    assert ok.exit_code == 0 and len(ok.json["tokens"]) == room - 2  # exactly at the limit


def test_verify_sections_catches_wrong_sections(llama, tmp_path, monkeypatch):
    """The sections reference is computed from the raw PEFT file: a scaling bug in loramgr's own
    preparation (doubled here while building) is caught, which a reference reusing it could not do."""
    from loramgr.formats.peft import Scaling

    tmp, man = llama
    peft_adapter(tiny_llama(), tmp_path / "ad", seed=9, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    real = Scaling.factor
    with monkeypatch.context() as m:
        m.setattr(Scaling, "factor", lambda self, *a: 2 * real(self, *a))
        assert invoke("build", "--base", "exp", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "exp").exit_code == 0
    r = invoke("verify", "--plan", tmp_path / "out" / "plan.json", "--mode", "sections")
    assert r.exit_code == 5 and "beyond the tolerance" in r.stderr, r.stdout + r.stderr
    r = invoke("verify", "--plan", tmp_path / "out" / "plan.json", "--hf-dir", tmp / "hf")
    assert r.exit_code == 5, r.stdout + r.stderr


@pytest.mark.parametrize(
    "case",
    [
        "no weights",
        "bad config",
        "remote code",
        "pickle only",
        "garbage weights",
        "mis-shaped weights",
        "missing tensors",
        "nan weight",
        "inf embedding row",
        "nan config float",
        "past fp16 in an fp16 export",
    ],
)
def test_base_export_refuses_unusable_model_dirs(tmp_path, case):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "hf"
    tiny_llama().save_pretrained(d)
    weights = next(d.glob("*.safetensors"))
    want = 4
    if case == "no weights":
        weights.unlink()
    elif case == "bad config":
        (d / "config.json").write_text("{not json")
    elif case == "remote code":
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
        (d / "config.json").write_text(json.dumps(cfg))
        want = 2
    elif case == "pickle only":
        torch.save(load_file(str(weights)), d / "pytorch_model.bin")
        weights.unlink()
    elif case == "garbage weights":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}" + b"\x00" * 64)
    elif case == "nan config float":
        cfg = json.loads((d / "config.json").read_text())
        cfg["rms_norm_eps"] = float("nan")
        (d / "config.json").write_text(json.dumps(cfg))
    elif case in ("nan weight", "inf embedding row", "past fp16 in an fp16 export"):
        t = load_file(str(weights))
        k = next(k for k in t if ("embed_tokens" if case == "inf embedding row" else "up_proj") in k)
        t[k][0, 0] = {"nan weight": float("nan"), "inf embedding row": float("inf")}.get(case, 1e5)
        save_file(t, str(weights), metadata={"format": "pt"})
    else:
        t = load_file(str(weights))
        k = next(k for k in t if "q_proj" in k)
        if case == "mis-shaped weights":
            t[k] = torch.zeros(3, 3)
        else:
            del t[k]
        save_file(t, str(weights), metadata={"format": "pt"})
    r = invoke(
        "base",
        "export",
        d,
        "--name",
        "x",
        "--target-modules",
        "q_proj",
        "--max-rank",
        "4",
        "--graphs",
        "prefill=4",
        *(["--precision", "fp16"] if "fp16" in case else []),
        "-o",
        tmp_path / "out",
    )
    assert r.exit_code == want, (case, r.stderr)
    named = {"nan weight": "up_proj", "inf embedding row": "embed_tokens", "nan config float": "rms_norm_eps"}
    if case in named or "fp16" in case:
        assert named.get(case, "once cast to fp16") in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    if case == "pickle only":
        assert "pytorch_model.bin" in r.stderr and "safe_serialization=True" in r.stderr
    assert invoke("list", "bases", "--json").json == []


def test_a_one_token_prompt_verifies_and_an_overflowing_alpha_is_refused(llama, tmp_path):
    """`verify --input-ids 5` pads the prompt to the prefill graph (it ran ORT on a [1, 1] input before);
    `run --alpha 1e39` is refused: float32 holds no such number (logits were NaN, tokens 0, exit 0)."""
    tmp, _ = llama
    plan = _built_plan(llama, tmp_path, seed=5).root / "plan.json"
    for ids in ("5", "5,17,99,3,8,1,2,9"):
        v = invoke("verify", "--plan", plan, "--hf-dir", tmp / "hf", "--input-ids", ids, "--json")
        assert v.exit_code == 0 and v.json["adapters"][0]["max_abs_diff"] < 1e-4, v.stdout + v.stderr
    for alpha in ("1e39", "-1e39"):
        r = invoke("run", "--plan", plan, "--adapter", "ad", "--input-ids", "5,17", "--steps", "2", "--alpha", alpha)
        assert r.exit_code == 4 and "finite float32" in r.stderr, r.stderr
    for ids in (str(tiny_llama().config.vocab_size), "99999999999999999999"):  # never wrapped into another token
        r = invoke("verify", "--plan", plan, "--hf-dir", tmp / "hf", "--input-ids", ids)
        assert r.exit_code == 2 and "outside the vocabulary" in r.stderr, r.stderr


@pytest.mark.parametrize("targets", ["", ",", " "])
def test_no_target_module_is_refused_before_any_weight_or_file(tmp_path, targets):
    tiny_llama().save_pretrained(tmp_path / "hf")
    args = ["--max-rank", "4", "--graphs", "prefill=4", "-o", tmp_path / "out"]
    r = invoke("base", "export", tmp_path / "hf", "--name", "x", "--target-modules", targets, *args)
    assert r.exit_code == 2 and "--target-modules" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _built_plan(llama, tmp_path: Path, seed: int):
    """The exported tiny Llama registered with one PEFT adapter ``ad`` (q/v, r 8), built and planned."""
    from loramgr.runtime import Plan

    tmp, man = llama
    peft_adapter(tiny_llama(), tmp_path / "ad", seed=seed, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_and_prepare(tmp_path, tmp / "onnx", man, tmp_path / "ad")
    assert invoke("build", "--base", "exp", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "exp").exit_code == 0
    return Plan.load(tmp_path / "out" / "plan.json")


def test_shared_weights_run_equals_separate_sessions(llama, tmp_path):
    """`loramgr run --share-weights` (the default): prefill and decode read one memory-mapped copy of
    the weights; tokens and logits equal separate sessions' (each loading its own copy)."""
    from loramgr.runtime.ort import LoraSession, generate
    from loramgr.runtime.weights import SharedWeights

    plan = _built_plan(llama, tmp_path, seed=5)
    a = generate(plan, [5, 17, 99, 3], 6, "ad", share_weights=True)
    b = generate(plan, [5, 17, 99, 3], 6, "ad", share_weights=False)
    assert a.tokens == b.tokens
    assert max(float(np.abs(x - y).max()) for x, y in zip(a.logits, b.logits, strict=True)) < 1e-5
    w = SharedWeights(plan)
    pre, dec = (LoraSession(plan, graph=g, weights=w) for g in ("prefill", "decode"))
    shas = {e["sha256"] for g in plan.graphs.values() for e in g["external_data"]}
    assert len(w._maps) == len(shas) == 1  # one data file read by both graphs, mapped once
    assert w._values and all(v is not None for v in w._values.values())
    r = invoke(
        "run",
        "--plan",
        tmp_path / "out" / "plan.json",
        "--adapter",
        "ad",
        "--input-ids",
        "5,17,99,3",
        "--steps",
        "6",
        "--no-share-weights",
        "--json",
    )
    assert r.exit_code == 0 and r.json["tokens"] == a.tokens
    del pre, dec


def test_default_adapter_fast_path(llama, tmp_path):
    """With shared weights, the default adapter (and any entry at alpha 0) runs a twin session of the
    graph without its LoRA branches, over the same mapped weights (no new mapping, no new tensor);
    its logits equal the full graph's with zero branches. An adapter still runs the full graph, and a
    caller feeding a LoRA input explicitly is never routed to the twin."""
    from loramgr.runtime.fastpath import Twin
    from loramgr.runtime.ort import LoraSession
    from loramgr.runtime.weights import SharedWeights
    from loramgr.testing.feeds import decode_feeds

    plan = _built_plan(llama, tmp_path, seed=7)
    w = SharedWeights(plan)
    fast = LoraSession(plan, graph="decode", weights=w)
    full = LoraSession(plan, graph="decode")  # own weights: no twin (it would be a second copy)
    feeds = decode_feeds(full.session, seed=3, scale=0.5)
    values = len(w._values)
    ref = full.run(feeds, adapter="default")[0]
    assert fast.twin is None
    got = fast.run(feeds, adapter="default")[0]
    assert fast.twin is not None and full.twin is None
    assert len(w._values) == values and len(w._maps) == 1  # the twin reused the mapped tensors
    twin_inputs = {i.name for i in fast.twin.session.get_inputs()}
    assert not any("lora" in n for n in twin_inputs) and set(feeds) <= twin_inputs
    assert float(np.abs(got - ref).max()) < 1e-5

    calls = [0]
    real = fast.twin.session

    class Counting:
        def run(self, *a, **k):
            calls[0] += 1
            return real.run(*a, **k)

        def get_inputs(self):
            return real.get_inputs()

    fast._twin = Twin(Counting(), fast.twin.inputs)
    with_ad = fast.run(feeds, adapter="ad")[0]
    assert calls[0] == 0 and float(np.abs(with_ad - full.run(feeds, adapter="ad")[0]).max()) < 1e-5
    assert float(np.abs(with_ad - ref).max()) > 1e-3  # the adapter changes the logits: the full graph ran
    at_zero = fast.run(feeds, adapter="ad", alpha=0.0)[0]
    assert calls[0] == 1 and float(np.abs(at_zero - ref).max()) < 1e-5
    fast.apply("default")
    fast.run(feeds)
    assert calls[0] == 2
    a_input = next(n for n in fast.input_names if n.endswith(".lora_A.weight"))
    explicit = dict(feeds, **{a_input: np.zeros(fast._inputs[a_input].shape, np.float32)})
    assert float(np.abs(fast.run(explicit)[0] - ref).max()) < 1e-5 and calls[0] == 2  # the full graph ran

    off = LoraSession(plan, graph="decode", weights=w, fast_default=False)
    off.run(feeds, adapter="default")
    assert off.twin is None
