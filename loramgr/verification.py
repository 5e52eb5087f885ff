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

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr.errors import IncompatibleError
from loramgr.records import Adapter, Base, JsonRecord

if TYPE_CHECKING:
    from loramgr.registry.api import Registry
    from loramgr.runtime import Plan

FP32_TOL, FP16_TOL = 1e-4, 2e-2


def _diff(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference; infinite when either side holds NaN or Inf (``max`` would drop a NaN)."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not (np.isfinite(g).all() and np.isfinite(w).all()):
        return float("inf")
    return float(np.abs(g - w).max()) if g.size else 0.0


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return 1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-300))


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


def _peft_logits(hf_dir: str, adapter: Adapter, store_path: Path, ids: np.ndarray, precision: str) -> np.ndarray:
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from loramgr.export import quiet_transformers

    quiet_transformers()

    cfg = adapter.peft_config or {}
    keep = (
        "r",
        "lora_alpha",
        "target_modules",
        "use_rslora",
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "bias",
        "layers_to_transform",
    )
    kw = {k: cfg[k] for k in keep if cfg.get(k) is not None}
    kw.setdefault("r", adapter.rank)
    kw.setdefault("lora_alpha", adapter.lora_alpha)
    tm = adapter.target_modules
    kw.setdefault("target_modules", list(tm) if isinstance(tm, tuple) else tm)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with tempfile.TemporaryDirectory() as d:
        LoraConfig(**kw).save_pretrained(d)
        (Path(d) / "adapter_model.safetensors").symlink_to(store_path)
        pm = PeftModel.from_pretrained(model, d).eval().to(dtype)
        with torch.no_grad():
            logits: np.ndarray = pm(input_ids=torch.from_numpy(ids)).logits.float().numpy()
            return logits


def _prefill_logits(plan: Plan, name: str, ids: np.ndarray, alpha: float | None) -> np.ndarray:
    from loramgr.runtime.generate import _run_chain
    from loramgr.runtime.ort import lm_chains

    pre, _ = lm_chains(plan, name, alpha)
    n = ids.shape[1]
    return _run_chain(
        pre,
        {
            "input_ids": ids,
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        },
        {},
    )


def _feeds(session: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for a graph run: random activations, all-ones masks, positions 0..n-1, zero ids."""
    from loramgr.runtime.generate import _NP

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


def _sections_check(plan: Plan, name: str, ad: Adapter, base: Base, alpha: float | None) -> tuple[float, float]:
    """(max abs diff, min cosine) of sections vs prepare(), and plan runs vs direct feeds."""
    from loramgr.lora.inputs import prepared_inputs
    from loramgr.runtime.ort import LoraSession

    want = prepared_inputs(ad, base)
    entry = plan.adapter(name)
    worst, cos = 0.0, 1.0
    rng = np.random.default_rng(0)
    for graph in plan.graphs:
        sec = entry.section_for(graph)
        if plan.doc["backend"] == "ort":
            from loramgr.sections.backends.ort import read_section

            _, _, params = read_section(plan.verified(sec))
            for k, v in params.items():
                worst = max(worst, _diff(v, want[k]))
        s = LoraSession(plan, graph=graph)
        feeds = _feeds(s.session, rng)
        a = entry.recommended_alpha if alpha is None else alpha
        got = s.run(feeds, adapter=name, alpha=a)
        direct = dict(feeds)
        direct.update({k: v for k, v in want.items() if k in s.input_names})
        if s.alpha_tensor in s.input_names:
            direct[s.alpha_tensor] = np.array([a], dtype=s._alpha_dtype())
        ref = s.session.run(None, direct)
        for g, r in zip(got, ref, strict=True):
            worst = max(worst, _diff(g, r))
            cos = min(cos, _cos(g, r))
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
) -> Verification:
    """Compare each adapter of the plan with its reference; returns rows and an overall ``ok``."""
    from loramgr.runtime import Plan

    plan = Plan.load(plan_path)
    base = reg.base(f"{plan.base['name']}@{plan.base['version']}")
    export = base.export or {}
    hf = hf_dir or export.get("source")
    if mode == "auto":
        mode = "peft" if hf and Path(hf, "config.json").is_file() and _peft_available() else "sections"
    if mode == "peft" and not (hf and _peft_available()):
        raise IncompatibleError("verify --mode peft", "needs the [export] extra and the base's HF directory (--hf-dir)")
    tol = tolerance if tolerance is not None else (FP16_TOL if base.precision == "fp16" else FP32_TOL)
    names = adapters or list(plan.adapters)
    rows = []
    for name in names:
        entry = plan.adapter(name)
        ad = reg.adapter(entry.ref)
        if mode == "peft":
            seq = next(g for g in plan.graphs.values() if g.get("kind") != "decode")["inputs"]["input_ids"]["shape"][1]
            ids = np.array([(input_ids or list(range(3, 3 + 7 * seq, 7)))[:seq]], np.int64) % int(
                export.get("vocab_size") or 2**31
            )
            n = ids.shape[1]
            got = _prefill_logits(plan, name, ids, alpha)
            assert hf is not None
            want = _peft_logits(hf, ad, ad.store_path, ids, base.precision)
            diff = _diff(got[:, :n], want)
            cos = _cos(got[:, :n], want)
        else:
            diff, cos = _sections_check(plan, name, ad, base, alpha)
        rows.append(VerifyRow(entry.ref, mode, diff, cos, tol, bool(diff <= tol)))
    return Verification(str(plan_path), mode, all(r.ok for r in rows), rows)
