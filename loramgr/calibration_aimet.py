"""``loramgr calibrate --engine aimet``: Qualcomm's AIMET computes the encodings, on the base's own graphs.

One ``aimet_onnx.QuantizationSimModel`` per graph (HTP's per-channel config, ``--scheme`` picking the
weight and activation types) serves every owner in one process:

1. **the base** (the default adapter: zero LoRA inputs): every quantizer is calibrated; its activation
   encodings and its weights' encodings are the base's own. Then every quantizer whose tensor no
   adapter can change is frozen: they are computed once, for all owners;
2. **each adapter, then each use case**: its prepared LoRA weights are fed, and AIMET recomputes the
   rest: the LoRA weights' encodings (per channel, int8 or int16 as the scheme says) and the encodings
   of every activation the adapter changes, i.e. every tensor downstream of a LoRA input (the
   LoRA-branch outputs, the projection outputs, later layers, the graph outputs). These are the
   owner's own encodings, stored per tensor; the base's stay shared.

The quantized simulation then runs the owner's calibration prompts, and its logits are compared with
the float graphs' by cosine (the ``--json`` summary). Graphs that quantize the LoRA inputs
(``--quantized-lora``) are simulated from a float copy (AIMET refuses QDQ graphs); the mask fill (the
fp32 minimum) is clamped for calibration as the QDQ build does (``sections/backends/qdq.py``).

AIMET (``aimet-onnx``) is an extra: ``pip install 'loramgr[aimet]'`` and then
``pip install --no-deps aimet-onnx`` (its declared dependencies pull a torchvision that breaks torch).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loramgr.calibration import Calibration, OwnerCalibration, load_data, owner_feeds, owners_of
from loramgr.errors import InvalidInputError, UsageError, first_line
from loramgr.infra.progress import Progress
from loramgr.quantsim import cosine, downstream, float_lora
from loramgr.records import Base, EncodingSet, FileKind
from loramgr.runtime.generate import Runner, _run_chain, greedy, prefill_feeds
from loramgr.sections.backends.qdq import MASK_FILL, clamp_mask
from loramgr.sections.layout import materialize_graphs, select_adapters

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

#: scheme -> (weight type, activation type) as AIMET names them
SCHEMES = {"w8a16": ("int8", "int16"), "w8a8": ("int8", "int8"), "w16a16": ("int16", "int16")}
#: AIMET's HTP config: weights symmetric per output channel, activations asymmetric
CONFIG = "htp_v73"
#: prompts per owner used for the cosine of the quantized simulation against the float graphs
COSINE_PROMPTS = 4


def _aimet() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from aimet_onnx import quantsim
    except ImportError as e:
        raise UsageError(
            "calibrate --engine aimet",
            f"needs Qualcomm's AIMET ({e.name} is missing)",
            hint="pip install 'loramgr[aimet]' && pip install --no-deps aimet-onnx==2.42.0",
        ) from None
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # AIMET's sessions: inputs with defaults are LoRA inputs, not a warning
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("Quant", "aimet", "Utils")):
            logging.getLogger(name).setLevel(logging.ERROR)
    return quantsim


@dataclass
class _Graph:
    """One graph's float session, its simulation, and which of its tensors adapters change."""

    name: str
    kind: str
    float_session: Any
    sim: Any
    outputs: list[str]  # the graph's output names, in order (the sim renames quantized outputs)
    lora: set[str]  # its LoRA inputs (and alpha): quantizers that are per owner
    changed: set[str]  # tensors downstream of its LoRA inputs


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _prepare(quantsim: Any, base: Base, paths: dict[str, Path], scheme: str, tmp: Path) -> dict[str, _Graph]:
    import onnx

    wtype, atype = SCHEMES[scheme]
    lora = set(base.lora_inputs) | ({base.alpha_tensor} if base.alpha_tensor else set())
    graphs = {}
    for g in base.graphs:
        model = onnx.load(str(paths[g.name]))
        float_lora(model)
        clamp_mask(model, MASK_FILL["qdq-u16u8" if atype == "int16" else "qdq-u8u8"])
        fpath = tmp / f"{g.name}.float.onnx"
        onnx.save(model, str(fpath), save_as_external_data=True, location=f"{g.name}.float.data")
        mine = {i.name for i in model.graph.input} & lora
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            sim = quantsim.QuantizationSimModel(
                onnx.load(str(fpath)),
                param_type=wtype,
                activation_type=atype,
                quant_scheme="min_max",
                config_file=CONFIG,
                providers=["CPUExecutionProvider"],
            )
        if base.alpha_tensor in sim.qc_quantize_op_dict:  # a strength, not a tensor to quantize
            sim.qc_quantize_op_dict[base.alpha_tensor].enabled = False
        graphs[g.name] = _Graph(
            g.name,
            g.kind,
            _session(fpath),
            sim,
            [o.name for o in model.graph.output],
            mine,
            downstream(model, mine),
        )
    return graphs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """AIMET prints progress and notes on stdout/stderr; ``--json`` output must stay clean."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _drive(
    graphs: dict[str, _Graph], target: str, sim_session: Any, lora: dict[str, np.ndarray], prompts: list[list[int]]
) -> None:
    """Run the prompts through the LM chain with ``target``'s graph on ``sim_session`` (the others on
    their float sessions), so its quantizers see what the graph sees in generation."""

    def runner(g: _Graph) -> Runner:
        s = sim_session if g.name == target else g.float_session
        return Runner.from_session(s, extra=lora, outputs=g.outputs)

    pre = [runner(g) for g in graphs.values() if g.kind != "decode"]
    dec = [runner(g) for g in graphs.values() if g.kind == "decode"] or None
    for ids in prompts:
        greedy(pre, dec, ids, 2 if dec else 1)


def _read(sim: Any, names: set[str] | None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """(activation, param) encodings of the sim's enabled quantizers (``names``: only these)."""
    acts: dict[str, list[dict[str, Any]]] = {}
    params: dict[str, list[dict[str, Any]]] = {}
    for name, q in sim.qc_quantize_op_dict.items():
        if not q.enabled or (names is not None and name not in names):
            continue
        exported = q.export_encodings("0.6.1")
        if not exported:
            continue
        entries = [
            {
                "bitwidth": int(e["bitwidth"]),
                "dtype": str(e.get("dtype", "int")),
                "is_symmetric": str(e.get("is_symmetric", "False")),
                "min": float(e["min"]),
                "max": float(e["max"]),
                "scale": float(e["scale"]),
                "offset": int(round(float(e["offset"]))),
            }
            for e in exported
            if "scale" in e
        ]
        if entries:
            (params if name in sim.param_names else acts)[name] = entries
    return acts, params


def _cosine(graphs: dict[str, _Graph], lora: dict[str, np.ndarray], prompts: list[list[int]]) -> float | None:
    """Mean cosine of the last part's logits, quantized simulation vs float, over ``prompts``."""
    last = [g for g in graphs.values() if g.kind != "decode"]
    if not last or "logits" not in last[-1].outputs:
        return None
    seq = int(last[0].float_session.get_inputs()[0].shape[1] or 1)
    sims = [Runner.from_session(g.sim.session, extra=lora, outputs=g.outputs) for g in last]
    floats = [Runner.from_session(g.float_session, extra=lora, outputs=g.outputs) for g in last]
    coss = []
    for ids in prompts:
        n = min(len(ids), seq)
        feeds = prefill_feeds(ids[:n], seq)
        coss.append(cosine(_run_chain(sims, feeds, {})[0, :n], _run_chain(floats, feeds, {})[0, :n]))
    return float(np.mean(coss))


def calibrate_aimet(
    reg: Registry,
    base_ref: str,
    refs: list[str] | None = None,
    *,
    all_: bool = False,
    data: str | Path,
    scheme: str = "w8a16",
    quiet: bool = False,
) -> Calibration:
    """Encodings by AIMET for the base (default adapter), then each selected adapter and use case."""
    if scheme not in SCHEMES:
        raise UsageError(f"--scheme {scheme}", f"must be one of {', '.join(SCHEMES)}")
    quantsim = _aimet()
    base = reg.base(base_ref)
    wbits, abits = (int(t[3:]) for t in SCHEMES[scheme])
    if base.precision not in ("fp32", "int8", "int16"):
        raise UsageError(
            f"calibrate --engine aimet --base {base.ref}",
            f"simulates fp32 graphs (integer LoRA inputs or not); this base is {base.precision}: export it in fp32",
        )
    fixed = base.precision if base.precision in ("int8", "int16") else None
    if fixed and fixed != f"int{wbits}":
        raise UsageError(
            f"--scheme {scheme}", f"base {base.ref} takes {fixed} LoRA weights; pick a scheme with w{fixed[3:]}"
        )
    adapters = list(reg.adapter_many(select_adapters(reg, base, list(refs or []), all_)).values())
    kind, payload = load_data(data)
    if kind != "ids":
        raise UsageError(f"--data {data}", "the aimet engine takes a .jsonl of input_ids (an exported LM base)")
    owners = owners_of(reg, base, adapters)
    done: list[OwnerCalibration] = []
    with tempfile.TemporaryDirectory(prefix="loramgr-aimet-") as tmpdir:
        tmp = Path(tmpdir)
        files = materialize_graphs(reg, base, tmp)
        paths = {f.graphs[0]: tmp / f.rel_path for f in files if f.kind is FileKind.GRAPH}
        if not any("input_ids" in g.inputs for g in base.graphs):
            raise UsageError("calibrate --engine aimet", "needs an exported LM base (graphs with input_ids)")
        with Progress(len(owners) + 1, "calibrating with AIMET", quiet) as progress:
            graphs = _prepare(quantsim, base, paths, scheme, tmp)
            progress.advance(f"AIMET simulation of {len(graphs)} graph(s), {scheme}")
            prompts = [list(p) for p in payload]
            for i, (ad, uc) in enumerate(owners):
                lora, label = owner_feeds(reg, base, ad, uc)
                acts: dict[str, list[dict[str, Any]]] = {}
                params: dict[str, list[dict[str, Any]]] = {}
                for g in graphs.values():
                    try:
                        with _quiet():
                            g.sim.compute_encodings(lambda s, g=g, lora=lora: _drive(graphs, g.name, s, lora, prompts))
                    except Exception as e:  # noqa: BLE001 - ORT / AIMET errors on a sample: the data's fault
                        raise InvalidInputError(str(data), f"AIMET cannot run a sample ({first_line(e)})") from None
                    a, p = _read(g.sim, None if i == 0 else g.changed | g.lora)
                    # stored per name: a name two graphs share keeps the first graph's (prefill's) encoding
                    acts = a | acts
                    params = {k: v for k, v in p.items() if (k in g.lora) != (i == 0)} | params
                    if i == 0:  # the base's: computed once, frozen for every owner after it
                        for name, q in g.sim.qc_quantize_op_dict.items():
                            if name not in g.changed and name not in g.lora:
                                q.freeze_encodings()
                cos = _cosine(graphs, lora, prompts[:COSINE_PROMPTS])
                enc = EncodingSet(acts, params)
                reg.encodings.save(
                    base.id,
                    ad.id if ad else None,
                    enc,
                    f"aimet:{scheme}",
                    replace_all=True,
                    use_case_id=uc.id if uc else None,
                )
                done.append(OwnerCalibration(label, len(acts), len(params), cos))
                progress.advance(f"calibrated {label}")
    return Calibration(base.ref, str(data), abits, wbits, done, engine="aimet", scheme=scheme)
