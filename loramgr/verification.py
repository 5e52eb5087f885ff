"""``loramgr verify``: does the plan's reference runtime compute what the adapter means?

Two references, the strongest available is used:
- ``peft`` (the ``[export]`` extra installed and the base's Hugging Face directory known, from its
  ``base export`` manifest or ``--hf-dir``): the HF model with the registered adapter loaded by PEFT;
  the plan's prefill chain must give the same logits.
- ``sections`` (numpy + onnxruntime only): every section's tensors must equal
  :func:`loramgr.lora.prepare.prepare` recomputed from the registered adapter file, and each graph run
  through the plan with the adapter must equal the same graph fed those tensors directly, i.e.
  ``y = base(x) + alpha * (x @ A) @ B`` with the reference A/B.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr.errors import IncompatibleError, NotFoundError, UsageError
from loramgr.export import quiet_transformers
from loramgr.quantsim import THRESHOLDS, QuantSim, cosine, exact_weights_chain, scheme_of
from loramgr.records import Adapter, Base, JsonRecord
from loramgr.reference import peft_factors, reference_for, reference_lora
from loramgr.runtime import Plan
from loramgr.runtime.generate import _NP, Runner, _run_chain, prefill_feeds
from loramgr.runtime.ort import LoraSession, lm_chains
from loramgr.sections.backends.ort import read_section

if TYPE_CHECKING:
    from loramgr.registry.api import Registry
    from loramgr.runtime import Plan
    from loramgr.runtime.ort import GraphOpener, Htp

FP32_TOL, FP16_TOL = 1e-4, 2e-2
#: A SoC's float path on HTP computes in fp16 (the QNN EP with a soc_model): logits vs PEFT fp32 are held
#: to a relative error (max |diff| over max |logit|) and top-1 agreement; docs/htp.md says why these values.
HTP_FP16_REL, HTP_FP16_TOP1 = 3e-2, 0.8
#: A quantized HTP target (QDQ activations/weights): logits vs PEFT fp32 by cosine (and the same top-1
#: agreement); docs/htp.md gives the measurements behind the bounds.
HTP_QDQ_COSINE = {"qdq-u16u8": 0.99, "qdq-u8u8": 0.98}


def _diff(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference; infinite when either side holds NaN or Inf (``max`` would drop a NaN)."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not (np.isfinite(g).all() and np.isfinite(w).all()):
        return float("inf")
    return float(np.abs(g - w).max()) if g.size else 0.0


def _peft_available() -> bool:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class VerifyRow(JsonRecord):
    adapter: str
    mode: str
    max_abs_diff: float
    cosine: float
    tolerance: float
    ok: bool
    rel_error: float | None = None  # --device htp: max |diff| / max |reference|
    top1_agreement: float | None = None  # --device htp, quantized builds: share of positions whose argmax agrees
    #: quantized builds: cosine of the adapter's effect (its logits minus the base's) with its encodings
    #: against with its exact weights, both in the same quantized simulation (docs/quantization.md)
    delta_cosine: float | None = None


@dataclass(frozen=True)
class Verification(JsonRecord):
    """What ``loramgr verify --json`` prints."""

    plan: str
    mode: str
    ok: bool
    adapters: list[VerifyRow]

    @property
    def failed(self) -> list[str]:
        return [r.adapter for r in self.adapters if not r.ok]


def _peft_dir(adapter: Adapter, d: Path) -> None:
    """A PEFT adapter directory for ``adapter`` made of its stored files."""
    from peft import LoraConfig

    d.mkdir(parents=True, exist_ok=True)
    if adapter.config_json is not None:
        # the user's own adapter_config.json, read by PEFT itself. Only a --lora-alpha given at
        # register time (the registered alpha differs from the file's) replaces the file's value:
        # that is what the adapter then means
        text = adapter.config_json
        if adapter.lora_alpha != adapter.config("lora_alpha"):
            doc = json.loads(text)
            doc["lora_alpha"] = adapter.lora_alpha
            text = json.dumps(doc)
        (d / "adapter_config.json").write_text(text)
    else:  # registered from a bare .safetensors with --lora-alpha: the minimal config that means
        tm = adapter.target_modules
        kw: dict[str, Any] = {
            "r": adapter.rank,
            "lora_alpha": adapter.lora_alpha,
            "target_modules": list(tm) if isinstance(tm, tuple) else tm,
        }
        LoraConfig(**kw).save_pretrained(str(d))
    (d / "adapter_model.safetensors").symlink_to(adapter.store_path)


def _peft_logits(hf_dir: str, members: list[tuple[Adapter, float]], ids: np.ndarray, precision: str) -> np.ndarray:
    """PEFT's logits with every member adapter active at once (``set_adapter([...])``), each one's
    scaling multiplied by its alpha: what a use case (or an adapter alone, at an alpha) means."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32, attn_implementation="eager", use_safetensors=True
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"slot{i}" for i in range(len(members))]
        for i, (ad, _) in enumerate(members):
            _peft_dir(ad, Path(tmp) / names[i])
        pm = PeftModel.from_pretrained(model, str(Path(tmp) / names[0]), adapter_name=names[0])
        for name in names[1:]:
            pm.load_adapter(str(Path(tmp) / name), adapter_name=name)
        pm.base_model.set_adapter(names)  # type: ignore[operator]
        for mod in pm.modules():
            scaling = getattr(mod, "scaling", None)
            if isinstance(scaling, dict):
                for name, (_, alpha) in zip(names, members, strict=True):
                    if name in scaling:
                        scaling[name] *= alpha
        pm = pm.eval().to(dtype)
        with torch.no_grad():
            logits: np.ndarray = pm(input_ids=torch.from_numpy(ids)).logits.float().numpy()
            return logits


def _prefill_logits(plan: Plan, name: str, ids: np.ndarray, alpha: float | None, htp: GraphOpener | None) -> np.ndarray:
    """The plan's logits for the prompt ``ids`` (``[1, n]``), right-padded to the prefill graph's fixed
    length (masked, so the first n rows are the prompt's alone, as in generation)."""
    return chain_logits(lm_chains(plan, name, alpha, htp=htp)[0], ids)


def chain_logits(pre: list[Runner], ids: np.ndarray) -> np.ndarray:
    """A prefill chain's logits for ``ids`` (``[1, n]``), right-padded and masked to its fixed length."""
    n = ids.shape[1]
    seq = pre[0].inputs["input_ids"][0][1]
    seq = seq if isinstance(seq, int) and seq >= n else n
    return _run_chain(pre, prefill_feeds(ids[0].tolist(), seq), {})[:, :n]


def _feeds(session: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for a graph run: random activations, all-ones masks, positions 0..n-1, zero ids."""
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        dt = _NP.get(i.type, np.float32)
        if np.issubdtype(dt, np.integer):
            out[i.name] = (
                np.ones(shape, dt)
                if "mask" in i.name
                else np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy()
                if "position" in i.name
                else np.zeros(shape, dt)
            )
        else:
            out[i.name] = rng.standard_normal(shape).astype(dt)
    return out


def _section_delta(
    params: dict[str, np.ndarray], a_name: str, b_name: str, col_alpha: np.ndarray | None = None
) -> np.ndarray:
    """``A @ diag(col_alpha) @ B`` of a section's tensors (integer codes times their per-channel
    ``_scale``); ``col_alpha`` scales each rank column (alpha slots), None: 1."""

    def real(n: str) -> np.ndarray:
        v = params[n].astype(np.float64)
        return v * params[n + "_scale"].astype(np.float64)[None, :] if n + "_scale" in params else v

    a = real(a_name) if col_alpha is None else real(a_name) * col_alpha[None, :]
    product: np.ndarray = a @ real(b_name)
    return product


def _sections_check(
    plan: Plan, name: str, members: list[tuple[Adapter, float]], base: Base, htp: Htp | None = None
) -> tuple[float, float]:
    """(max abs diff, min cosine) of an adapter or a use case (``members``: adapters by slot with their
    alphas): each section's effective delta against the raw PEFT factors (:func:`peft_factors`), and
    each graph run through the plan against the same graph fed A/B built from those raw factors."""
    factors = [peft_factors(ad.store_path, ad.config_json, float(ad.lora_alpha or 0.0)) for ad, _ in members]
    alphas = [a for _, a in members]
    entry = plan.entry(name)
    slots = base.max_adapters
    worst, cos = 0.0, 1.0
    rng = np.random.default_rng(0)
    for graph in plan.graphs:
        points = base.points_of(graph)
        refs = {ap.module_path: [reference_for(f, ap.module_path) for f in factors] for ap in points}
        sec = entry.section_for(graph)
        if plan.doc["backend"] in ("ort", "qnn-ep"):
            _, _, params = read_section(plan.verified(sec))
            for ap in points:
                # with alpha slots each column is scaled by its slot's alpha; without, alpha scales it all
                col_alpha = None
                if slots and ap.tensor_indices:
                    vec = np.array(alphas + [0.0] * (slots + 1 - len(alphas)))
                    col_alpha = vec[params[ap.tensor_indices][0]]
                got = _section_delta(params, ap.tensor_a, ap.tensor_b, col_alpha)
                want = sum(
                    ((alphas[i] if slots else 1.0) * (r[0] @ r[1]) for i, r in enumerate(refs[ap.module_path]) if r),
                    np.zeros_like(got),
                )
                worst = max(worst, _diff(got, want))
        s = LoraSession(plan, graph=graph, htp=htp)
        if any(ap.dtype in ("int8", "int16") for ap in points):
            continue  # integer LoRA inputs cannot take float reference tensors; the sections were compared above
        feeds = _feeds(s.session, rng)
        s.apply(name)
        for i, (ad, a) in enumerate(members):
            if entry.is_use_case:
                s.set_alpha(a, adapter=ad.ref)
            elif i == 0:
                s.set_alpha(a)
        got_out = s.run(feeds)
        direct = dict(feeds) | reference_lora(points, refs, slots)
        if s.alpha_tensor in s.input_names:
            direct[s.alpha_tensor] = s.alpha_value(alphas)
        ref_out = s.session.run(None, direct)
        for g, r in zip(got_out, ref_out, strict=True):
            worst = max(worst, _diff(g, r))
            cos = min(cos, cosine(g, r))
    return worst, cos


def verify(
    reg: Registry,
    plan_path: str | Path,
    adapters: list[str] | None = None,
    *,
    hf_dir: str | None = None,
    tolerance: float | None = None,
    input_ids: list[int] | None = None,
    alpha: float | None = None,
    mode: str = "auto",
    htp: Htp | None = None,
) -> Verification:
    """Compare each adapter of the plan with its reference; returns rows and an overall ``ok``.
    ``htp``: the plan's compiled target runs on Qualcomm's HTP backend. The SoC's own numerics (fp16)
    are held to a relative error and top-1 agreement (``HTP_FP16_REL``, ``HTP_FP16_TOP1``), a quantized
    target to a cosine (``HTP_QDQ_COSINE``, with the tolerance column holding it) and the same top-1
    agreement, the simulator's fp32 mode (``htp.fp32``) to the fp32 tolerance."""
    plan = Plan.load(plan_path)
    base = reg.base(f"{plan.base['name']}@{plan.base['version']}")
    export = base.export or {}
    hf = hf_dir or export.get("source")
    if mode == "auto":
        mode = "peft" if hf and Path(hf, "config.json").is_file() and _peft_available() else "sections"
    if mode == "peft" and not (hf and _peft_available()):
        raise IncompatibleError("verify --mode peft", "needs the [export] extra and the base's HF directory (--hf-dir)")
    scheme = plan.target(htp.target)["precision"] if htp is not None else None  # exit 3 when it lacks it
    soc = htp is not None and not htp.fp32
    qdq_cos = HTP_QDQ_COSINE.get(str(scheme)) if soc else None
    tol = tolerance if tolerance is not None else (FP16_TOL if base.precision == "fp16" else FP32_TOL)
    if soc and tolerance is None:
        tol = qdq_cos if qdq_cos is not None else HTP_FP16_REL
    if mode == "peft":  # one prompt for every entry, checked once
        prefill = next(g for g in plan.graphs.values() if g.get("kind") != "decode")
        seq = prefill["inputs"]["input_ids"]["shape"][1]
        logits = prefill.get("outputs", {}).get("logits", {}).get("shape") or [None]
        vocab = int(export.get("vocab_size") or (logits[-1] if isinstance(logits[-1], int) else 2**31))
        prompt = input_ids or [t % vocab for t in range(3, 3 + 7 * seq, 7)]
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:  # as `run` refuses it: never wrapped into another token
            raise UsageError(f"--input-ids {str(bad[0])[:24]}", f"is outside the vocabulary (0 to {vocab - 1})")
        ids = np.array([prompt[:seq]], np.int64)
    names = adapters or [*plan.adapters, *plan.use_cases]
    scheme_q = scheme_of(plan) if htp is None and mode == "peft" else None  # a quantized build, simulated
    base_weights: dict[str, Any] = {}
    if scheme_q:
        base_weights = {k: v for k, v in reg.encodings.get(base.id, None).param.items() if k not in base.lora_inputs}
        base_got = _prefill_logits(plan, "default", ids, None, QuantSim(plan, "default", base_weights))
    rows = []
    for name in names:
        entry = plan.entry(name)
        refs = list(entry.adapters) if entry.is_use_case else [entry.ref]
        members = [(reg.adapter(r), a if alpha is None else alpha) for r, a in zip(refs, entry.alphas, strict=True)]
        for ad, _ in members:
            if not Path(ad.store_path).is_file():
                raise NotFoundError(
                    ad.ref, "its stored file is gone (retired and collected by gc): nothing to verify against"
                )
        if mode == "peft":
            n = ids.shape[1]
            sim = QuantSim(plan, name, base_weights) if scheme_q else None
            got = _prefill_logits(plan, name, ids, alpha, htp or sim)
            assert hf is not None
            want = _peft_logits(hf, members, ids, base.precision)
            if scheme_q:  # held to its scheme's bounds, not to the fp32 tolerance (docs/quantization.md)
                min_cos, min_top1, min_delta = THRESHOLDS.get(scheme_q, THRESHOLDS["w8a8"])
                min_cos = tolerance if tolerance is not None else min_cos  # --tolerance: the cosine to hold
                diff, cos = _diff(got[:, :n], want), cosine(got[:, :n], want)
                top1 = float((got[:, :n].argmax(-1) == want.argmax(-1)).mean())
                exact = chain_logits(exact_weights_chain(plan, base, name, members, base_weights), ids)
                delta = cosine(got[:, :n] - base_got[:, :n], exact[:, :n] - base_got[:, :n])
                ok = cos >= min_cos and top1 >= min_top1 and delta >= min_delta
                rows.append(VerifyRow(entry.ref, f"{mode}:{scheme_q}", diff, cos, min_cos, ok, None, top1, delta))
                continue
            diff = _diff(got[:, :n], want)
            cos = cosine(got[:, :n], want)
            if soc:
                rel = diff / max(float(np.abs(want).max()), 1e-30)
                top1 = float((got[:, :n].argmax(-1) == want.argmax(-1)).mean())
                close = cos >= tol if qdq_cos is not None else rel <= tol  # quantized: cosine; fp16: relative
                rows.append(VerifyRow(entry.ref, mode, diff, cos, tol, close and top1 >= HTP_FP16_TOP1, rel, top1))
                continue
        else:
            diff, cos = _sections_check(plan, name, members, base, htp)
        rows.append(VerifyRow(entry.ref, mode, diff, cos, tol, bool(diff <= tol)))
    return Verification(str(plan_path), mode, all(r.ok for r in rows), rows)
