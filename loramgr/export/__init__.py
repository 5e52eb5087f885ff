"""``loramgr base export``: a Hugging Face model directory -> LoRA-ready ONNX graphs.

Needs the ``[export]`` extra (torch, transformers); nothing else in loramgr imports this package.
Output: per part, one ONNX file per graph (``prefill``, ``decode``, ...) sharing one external data
file, plus ``export.json`` describing graphs, parts, cache layout and how to chain them.

Decoder-only models go through their own ``forward`` (``generic.py``); GPT-2 through a re-stated
loop (``model.py``); docs/export.md says why and what is refused.

fp16: the model's weights and activations are fp16, but the norms are HF's own (they upcast to fp32
before the variance), the mask bias is fp32 (adding it promotes the scores) and HF's eager attention
takes the softmax in fp32; so normalisation and softmax never overflow fp16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramgr.errors import InvalidInputError, UsageError, first_line
from loramgr.export.failures import fresh_dir, guarded
from loramgr.export.inputs import (
    check_finite_config,
    check_finite_weights,
    check_hf_dir,
    check_weights,
)
from loramgr.names import check_name
from loramgr.records import Base, JsonRecord

if TYPE_CHECKING:
    from loramgr.registry.api import Registry

DEFAULT_GRAPHS = "prefill=128,decode=1"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def quiet_transformers() -> None:
    """No progress bars or deprecation chatter from transformers in our output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"--max-part-bytes {text}", "use a number with an optional unit: B, KB, MB, GB, KiB, MiB, GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_graphs(text: str) -> list[tuple[str, int]]:
    """``prefill=128,decode=1`` -> [("prefill", 128), ("decode", 1)]. A graph named ``prefill...``
    has no KV-cache inputs; every other graph reads a cache of ``context_len - q`` entries."""
    out: list[tuple[str, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, q = item.partition("=")
        check_name(name.strip(), "graph name")
        if not q.strip().isdigit() or int(q) < 1:
            raise UsageError(f"--graphs {item}", "expected NAME=SEQUENCE_LENGTH with a positive length")
        out.append((name.strip(), int(q)))
    if not out or len({n for n, _ in out}) != len(out):
        raise UsageError(f"--graphs {text}", "give distinct NAME=LENGTH pairs, e.g. prefill=128,decode=1")
    return out


def plan_parts(unit_bytes: list[int], limit: int) -> list[tuple[int, int]]:
    """Greedy contiguous packing of units (embeddings, layer 0..n-1, head) into parts of at most
    ``limit`` bytes; returns unit index ranges ``[start, end)``."""
    parts, start, acc = [], 0, 0
    for i, b in enumerate(unit_bytes):
        if b > limit:
            what = "the embeddings" if i == 0 else "the head" if i == len(unit_bytes) - 1 else f"decoder layer {i - 1}"
            raise UsageError(f"--max-part-bytes {limit}", f"{what} alone needs {b} bytes; raise the limit")
        if acc + b > limit and i > start:
            parts.append((start, i))
            start, acc = i, 0
        acc += b
    parts.append((start, len(unit_bytes)))
    return parts


def _bytes(mod: Any, dtype_size: int) -> int:
    return int(sum(p.numel() for p in mod.parameters())) * dtype_size


@dataclass(frozen=True)
class ExportOptions:
    """What ``base export`` makes of a model: the options of the command, in one record.

    ``max_adapters`` N adds alpha slots (use cases: several adapters at once): ``lora_alpha`` becomes
    ``[1, N]`` and every attachment point takes an int64 ``<module>.lora_indices [1, R]`` mapping its
    rank columns to slots; ``quantized_lora`` 8/16 makes the LoRA inputs integer codes with scales."""

    targets: list[str]
    max_rank: int
    graphs: str = DEFAULT_GRAPHS
    context_len: int | None = None
    precision: str = "fp32"
    max_part_bytes: int = 2 * 10**9
    quantized_lora: int | None = None
    max_adapters: int | None = None


def export_base(
    hf_dir: str | Path,
    out_dir: str | Path,
    options: ExportOptions,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export; returns the manifest (also written as ``OUT/export.json``)."""
    o = options
    targets, max_rank, graphs, context_len = o.targets, o.max_rank, o.graphs, o.context_len
    precision, max_part_bytes, quantized_lora, max_adapters = (
        o.precision,
        o.max_part_bytes,
        o.quantized_lora,
        o.max_adapters,
    )
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise UsageError(
            "base export", f"needs the [export] extra ({e.name} is missing)", hint="pip install 'loramgr[export]'"
        ) from None
    from loramgr.export import selfcheck
    from loramgr.export.layout import check_targets, find_targets, layout_of
    from loramgr.export.model import GraphSpec

    hf = Path(hf_dir)
    check_hf_dir(hf)
    if max_rank < 1:
        raise UsageError(f"--max-rank {max_rank}", "must be positive")
    gspecs = parse_graphs(graphs)
    say = progress or (lambda s: None)
    quiet_transformers()
    try:
        cfg = AutoConfig.from_pretrained(hf, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(str(hf / "config.json"), f"transformers cannot read it ({first_line(e)})") from None
    try:  # the config class's own defaults: an infinity there is the model's, not damage
        defaults = type(cfg)().to_dict()
    except Exception:  # noqa: BLE001 - config classes that need arguments: no defaults to compare
        defaults = {}
    check_finite_config(cfg.to_dict(), hf / "config.json", defaults=defaults)
    guarded(
        cfg, lambda: check_targets(*_skeleton(cfg), targets)
    )  # the architecture and targets, before any weight is read
    check_weights(hf)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise UsageError(f"--precision {precision}", "export writes fp32 or fp16 graphs")
    model: Any
    info: dict[str, Any]
    try:
        model, info = AutoModelForCausalLM.from_pretrained(  # type: ignore[misc]
            hf,
            local_files_only=True,
            dtype=torch.float32,
            attn_implementation="eager",
            use_safetensors=True,  # never unpickle a checkpoint
            output_loading_info=True,
        )
    except Exception as e:  # noqa: BLE001 - safetensors/torch/transformers raise assorted types on bad weights
        raise InvalidInputError(str(hf), f"the weights cannot be loaded ({first_line(e)})") from None
    missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if missing:  # transformers would fill them with random values: a wrong model, silently
        raise InvalidInputError(str(hf), f"the weights lack {len(missing)} tensor(s) of the model, e.g. {missing[0]}")
    model = model.eval().to(dtype)
    check_finite_weights(model, hf, precision)
    lay = guarded(cfg, lambda: layout_of(model))
    carried: tuple[int, ...] = ()
    if lay.decoder is not None:
        from loramgr.export.generic import check_decode, probe

        seen = guarded(cfg, lambda: probe(model, lay))
        lay, carried = dataclasses.replace(lay, cache=seen.cache), seen.carried
        if any(not g.startswith("prefill") for g, _ in gspecs):  # decode graphs: their cache
            guarded(cfg, lambda: check_decode(model, lay))  # must carry all the state there is
    n = len(lay.layers)
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 4096
    ctx = context_len or min(max_pos, max(256, 2 * max(q for _, q in gspecs)))
    too_long = [f"{g}={q}" for g, q in gspecs if q > max_pos]
    if too_long:  # the graph itself, whatever the context length
        raise UsageError(f"--graphs {','.join(too_long)}", f"longer than the model's {max_pos} positions")
    if any(q > ctx for _, q in gspecs) or ctx > max_pos:
        raise UsageError(f"--context-len {ctx}", f"must be >= every graph's length and <= {max_pos}")
    isz = torch.finfo(dtype).bits // 8
    lora_bytes = [
        sum((t.in_features + t.out_features) * max_rank * isz for t in find_targets(model, lay, targets, (i, i + 1)))
        for i in range(n)
    ]
    emb_bytes = sum(_bytes(m, isz) for m in lay.embeddings)
    head_bytes = sum(_bytes(m, isz) for m in lay.head)
    units = [emb_bytes] + [_bytes(lay.layers[i], isz) + lora_bytes[i] for i in range(n)] + [head_bytes]
    parts = plan_parts(units, max_part_bytes)
    if len(parts) > 1 and carried and carried[:1] + carried[2:] != (1, getattr(cfg, "hidden_size", carried[-1])):
        raise UsageError(
            f"--max-part-bytes {max_part_bytes}",
            f"model_type {cfg.model_type!r} hands its layers {list(carried)} (not [1, tokens, hidden]): "
            "parts cannot be cut between them; export it as one part",
        )
    out = Path(out_dir)
    with fresh_dir(out):
        (kvh, hd), _ = next(iter(lay.cache.values()))
        if quantized_lora not in (None, 8, 16):
            raise UsageError(f"--quantized-lora {quantized_lora}", "must be 8 or 16")
        if max_adapters is not None and not 1 <= max_adapters <= 1024:
            raise UsageError(f"--max-adapters {max_adapters}", "must be from 1 to 1024")
        manifest: dict[str, Any] = {
            "format": "loramgr.export",
            "version": 1,
            "family": lay.family,
            "quantized_lora": quantized_lora,
            "max_adapters": max_adapters,
            "source": str(hf.absolute()),
            "model_type": cfg.model_type,
            "precision": precision,
            "max_rank": max_rank,
            "target_modules": targets,
            "context_len": ctx,
            "num_layers": n,
            "kv_heads": kvh,
            "head_dim": hd,
            "cache": [
                {"layer": i, "key": list(k), "value": list(v)} for i, (k, v) in sorted(lay.cache.items())
            ],  # [heads, dim] of what each caching layer keeps; layers not listed keep none (KV sharing)
            "vocab_size": cfg.vocab_size,
            "rope_switch": lay.rope_switch,
            "parts": [],
            "graphs": [],
        }
        np_dtype = {"fp32": "float32", "fp16": "float16"}[precision]
        for pi, (u0, u1) in enumerate(parts):
            layers = (max(0, u0 - 1), min(n, u1 - 1))
            first, last = u0 == 0, u1 == len(units)
            protos: dict[str, Any] = {}
            checks: dict[str, Any] = {}
            for gname, q in gspecs:
                past = 0 if gname.startswith("prefill") else ctx - q
                name = gname if len(parts) == 1 else f"{gname}_part{pi + 1}"
                spec = GraphSpec(
                    name, q, past, layers, first, last, pi, find_targets(model, lay, targets, layers), max_adapters
                )
                say(f"exporting {name} (layers {layers[0]}..{layers[1] - 1}, q={q}, past={spec.past_len})")
                protos[f"{name}.onnx"] = _export_one(model, lay, spec, max_rank, dtype, np_dtype, quantized_lora)
                checks[f"{name}.onnx"] = selfcheck.expectations(
                    _forward(model, lay, spec), max_rank, dtype, quantized_lora is not None
                )
                manifest["graphs"].append(
                    {
                        "name": name,
                        "kind": "prefill" if not past else "decode",
                        "file": f"{name}.onnx",
                        "part": pi,
                        "q_len": q,
                        "past_len": spec.past_len,
                        "layers": list(layers),
                        "first": first,
                        "last": last,
                        "inputs": [i.name for i in protos[f"{name}.onnx"].graph.input],
                        "outputs": [o.name for o in protos[f"{name}.onnx"].graph.output],
                    }
                )
            from loramgr.export.onnx_io import save_sharing_weights

            data_name = "model.data" if len(parts) == 1 else f"part{pi + 1}.data"
            saved = save_sharing_weights(protos, out, data_name)
            for fname, (feeds, want) in checks.items():  # each graph, run once against the model itself
                guarded(cfg, functools.partial(selfcheck.compare, out / fname, feeds, want, cfg.model_type, precision))
            checks.clear()
            if saved["data_bytes"] > max_part_bytes:
                raise UsageError(
                    f"--max-part-bytes {max_part_bytes}",
                    f"part {pi + 1} came out at {saved['data_bytes']} "
                    "bytes; lower the limit a little to leave room for exporter constants",
                )
            manifest["parts"].append(
                {
                    "index": pi,
                    "layers": list(layers),
                    "embeddings": first,
                    "head": last,
                    "data": data_name,
                    "data_bytes": saved["data_bytes"],
                }
            )
        (out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _skeleton(cfg: Any) -> tuple[Any, Any]:
    """The model built on the meta device (no memory, no weights read) and its layout: the
    architecture is refused (exit 2) before a byte of weights is loaded."""
    import torch
    from transformers import AutoModelForCausalLM

    from loramgr.export.layout import layout_of

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 - transformers raises assorted types for configs it cannot build
        raise UsageError(
            f"model_type {getattr(cfg, 'model_type', None)!r}",
            f"has no causal LM the export can build ({first_line(e)}); "
            "`base export` takes decoder-only causal LMs (llama, mistral, qwen2/3, phi3, gemma2/3, granite, gpt2, ...)",
        ) from None
    lay = layout_of(model)
    if lay.decoder is not None:  # the trace's refusals (masks, cache shapes) on the meta device
        from loramgr.export.generic import probe

        try:
            probe(model, lay)
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 - ops the meta device cannot run; the probe with weights decides
            pass
    return model, lay


def _forward(model: Any, lay: Any, spec: Any) -> Any:
    """The exportable module of one graph: GPT-2's re-stated loop or the generic path."""
    from loramgr.export.generic import GenericForward
    from loramgr.export.model import Gpt2Forward

    return Gpt2Forward(model, lay, spec) if lay.family == "gpt2" else GenericForward(model, lay, spec)


def _export_one(
    model: Any, lay: Any, spec: Any, rank: int, dtype: Any, np_dtype: str, quantized_lora: int | None = None
) -> Any:
    import torch

    from loramgr.export.generic import GenericForward
    from loramgr.export.htp_clean import htp_clean
    from loramgr.export.onnx_io import add_lora_defaults, strip_dropout
    from loramgr.export.rewrites import translations

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notes
    fwd = _forward(model, lay, spec)
    args = fwd.example_inputs(rank, dtype)
    installed = fwd.installed() if isinstance(fwd, GenericForward) else contextlib.nullcontext()
    with torch.no_grad(), warnings.catch_warnings(), installed:
        warnings.simplefilter("ignore")
        prog = guarded(
            model.config,
            lambda: torch.onnx.export(
                fwd,
                args,
                input_names=fwd.input_names,
                output_names=fwd.output_names,
                dynamo=True,
                optimize=True,
                custom_translation_table=translations(),
                verbose=False,
            ),
        )
    if prog is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    proto = prog.model_proto
    got = [i.name for i in proto.graph.input]
    lora = {n for n in fwd.input_names if n.endswith((".lora_A.weight", ".lora_B.weight"))}
    missing = sorted(lora - set(got))
    if missing:
        raise RuntimeError(f"exporter dropped LoRA inputs {missing[:3]} of {spec.name}")
    shapes = {n: (tuple(a.shape), np_dtype) for n, a in zip(fwd.input_names, args, strict=True) if n in lora}
    slots = {n: tuple(a.shape) for n, a in zip(fwd.input_names, args, strict=True) if n.endswith(".lora_indices")}
    add_lora_defaults(proto, shapes, "lora_alpha" if spec.targets else None, spec.max_adapters, slots)
    if lay.rope_switch is not None and "rope_long" in got:  # default 0: HF's per-call choice
        import numpy as np
        from onnx import helper, numpy_helper

        from loramgr.runtime.generate import ROPE_SWITCH_KEY

        proto.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), "rope_long"))
        helper.set_model_props(
            proto, {**{p.key: p.value for p in proto.metadata_props}, ROPE_SWITCH_KEY: str(lay.rope_switch)}
        )
    strip_dropout(proto)
    htp_clean(proto)  # the same values, in ops Qualcomm's HTP compiles (export/htp_clean.py)
    if quantized_lora:
        from loramgr.export.onnx_io import quantize_lora_inputs

        quantize_lora_inputs(proto, sorted(lora), quantized_lora)
    return proto


@dataclass(frozen=True)
class ExportResult(JsonRecord):
    """What ``loramgr base export --json`` prints: the graphs written and the base registered."""

    out_dir: str
    export: dict[str, Any]  # the manifest, as written to export.json
    base: Base | None

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "export": self.export, "base": self.base.to_json() if self.base else None}


def export_and_register(
    reg: Registry | None,
    hf_dir: str | Path,
    out_dir: str | Path,
    options: ExportOptions,
    *,
    name: str,
    sdk_version: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """``base export``: export the graphs, then (with a registry) register them as base ``name``.

    The registered precision is the LoRA inputs' (``int8``/``int16`` with ``quantized_lora``); a
    multi-part export may have parts without attachment points (embeddings, head)."""
    check_name(name, "base name")
    man = export_base(hf_dir, out_dir, options, progress=progress)
    max_rank, quantized_lora, precision = options.max_rank, options.quantized_lora, options.precision
    base = None
    if reg is not None:
        out = Path(out_dir)
        base, _ = reg.register_base(
            [(g["name"], out / g["file"]) for g in man["graphs"]],
            name=name,
            max_rank=max_rank,
            precision=f"int{quantized_lora}" if quantized_lora else precision,
            sdk_version=sdk_version,
            allow_empty=len(man["parts"]) > 1,
            kinds={g["name"]: g["kind"] for g in man["graphs"]},
            details={"export": man},
        )
    return ExportResult(str(Path(out_dir).absolute()), man, base)
