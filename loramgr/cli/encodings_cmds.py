"""calibrate and encodings show/import."""

from __future__ import annotations

import click

from loramgr.calibration import calibrate as run
from loramgr.calibration_aimet import calibrate_aimet
from loramgr.cli.common import Ctx, base_option, emit_json, json_option, pass_ctx, table
from loramgr.encodings_import import import_encodings, parse_fold
from loramgr.errors import UsageError


@click.command()
@click.argument("refs", nargs=-1)
@base_option()
@click.option("--all", "all_", is_flag=True, help="Every validated adapter of the base (the default without REFS).")
@click.option(
    "--data",
    required=True,
    type=click.Path(readable=False, dir_okay=False),
    help="Calibration set: .npz (arrays named after graph inputs, first axis = samples) or .jsonl of input_ids.",
)
@click.option(
    "--act-bits",
    type=click.Choice(["8", "16"]),
    default="8",
    show_default=True,
    help="Activation encodings: asymmetric uint8/uint16.",
)
@click.option(
    "--weight-bits",
    type=click.Choice(["8", "16"]),
    default="8",
    show_default=True,
    help="Weight encodings: symmetric int8/int16.",
)
@click.option("--per-tensor", is_flag=True, help="One weight encoding per tensor instead of per output channel.")
@click.option(
    "--engine",
    type=click.Choice(["loramgr", "aimet"]),
    default="loramgr",
    show_default=True,
    help="loramgr: min/max of graph I/O on ONNX Runtime. aimet: Qualcomm's AIMET quantization simulation "
    "(extra [aimet]): every activation an adapter changes, per adapter.",
)
@click.option(
    "--scheme",
    type=click.Choice(["w8a16", "w8a8", "w16a16"]),
    default=None,
    help="--engine aimet: weight/activation types (default w8a16; the base's int8/int16 LoRA inputs fix w).",
)
@json_option
@pass_ctx
def calibrate(
    ctx: Ctx,
    refs: tuple[str, ...],
    base_ref: str,
    all_: bool,
    data: str,
    act_bits: str,
    weight_bits: str,
    per_tensor: bool,
    engine: str,
    scheme: str | None,
    as_json: bool,
) -> None:
    """Compute per-adapter activation encodings and weight encodings: on the reference runtime, or
    with AIMET (`--engine aimet --scheme w8a16`)."""
    if engine == "aimet":
        res = calibrate_aimet(
            ctx.registry, base_ref, list(refs), all_=all_, data=data, scheme=scheme or "w8a16", quiet=as_json
        )
    else:
        if scheme is not None:
            raise UsageError("--scheme", "goes with --engine aimet (the loramgr engine takes --act-bits/--weight-bits)")
        res = run(
            ctx.registry,
            base_ref,
            list(refs),
            all_=all_,
            data=data,
            act_bits=int(act_bits),
            weight_bits=int(weight_bits),
            per_tensor=per_tensor,
            quiet=as_json,
        )
    if as_json:
        emit_json(res)
        return
    cos = res.engine == "aimet"
    table(
        f"calibrated on {data} ({res.scheme or f'act {act_bits} bit, weights {weight_bits} bit'}, engine {res.engine})",
        ["adapter", "activation tensors", "param tensors"] + (["cosine vs float"] if cos else []),
        [
            (a.adapter, a.activation_tensors, a.param_tensors)
            + ((f"{a.cosine:.6f}" if a.cosine is not None else "-",) if cos else ())
            for a in res.adapters
        ],
    )


@click.group("encodings")
def encodings_group() -> None:
    """Per-adapter quantization encodings (AIMET JSON)."""


@encodings_group.command("show")
@click.argument("ref")
@base_option(required=False, help="Base model (default: the only one the adapter has encodings for).")
@click.option("--tensor", help="Only this tensor.")
@json_option
@pass_ctx
def encodings_show(ctx: Ctx, ref: str, base_ref: str | None, tensor: str | None, as_json: bool) -> None:
    """Print an adapter's encodings (`--json`: AIMET's layout). REF `default` with --base: the base's own."""
    found = ctx.registry.encodings.show(ref, base_ref, tensor)
    enc, label, base = found.encodings.to_aimet(), found.owner, found.base
    if as_json:
        emit_json(enc)
        return
    rows = []
    for sec in ("activation_encodings", "param_encodings"):
        for name, entries in enc[sec].items():
            e = entries[0]
            rows.append(
                (
                    sec.split("_")[0],
                    name,
                    len(entries),
                    e["bitwidth"],
                    e["is_symmetric"],
                    f"{e.get('min', 0):.4g}",
                    f"{e.get('max', 0):.4g}",
                    f"{e.get('scale', 0):.4g}",
                    e.get("offset"),
                )
            )
    table(
        f"encodings of {label} on {base}",
        ["kind", "tensor", "channels", "bits", "symmetric", "min", "max", "scale", "offset"],
        rows,
    )


@encodings_group.command("import")
@click.argument("ref")
@click.argument("path", type=click.Path(readable=False, dir_okay=False))
@base_option(required=False, help="Base model (default: the only one the adapter is validated for).")
@click.option(
    "--fold-scale",
    default="auto",
    show_default=True,
    help="Fold the adapter's alpha/r into lora_B encodings computed on the unscaled B (AIMET's LoRA flow): "
    "auto (when the file holds lora_scale tensors, or the folded encoding fits), yes, no, or a factor.",
)
@click.option(
    "--max-clip",
    type=float,
    default=0.01,
    show_default=True,
    help="Refuse (exit 5) a weight encoding that leaves more than this share of the prepared weights outside it.",
)
@click.option("--allow-clip", is_flag=True, help="Keep weight encodings that clip (after saying so).")
@json_option
@pass_ctx
def encodings_import(
    ctx: Ctx,
    ref: str,
    path: str,
    base_ref: str | None,
    fold_scale: str,
    max_clip: float,
    allow_clip: bool,
    as_json: bool,
) -> None:
    """Attach AIMET encodings (0.6.1, 1.0.0, 2.0.0 or the LoRA flow's flat map; AIMET's and PEFT's
    tensor names) to an adapter (REF `default` with --base: the base's own); they replace what
    calibration computed for the tensors they name. Unknown tensors: exit 4; a weight encoding that
    would clip the prepared weights: exit 5."""
    res = import_encodings(
        ctx.registry, ref, path, base_ref, fold=parse_fold(fold_scale), max_clip=max_clip, allow_clip=allow_clip
    )
    if as_json:
        emit_json(res)
        return
    click.echo(f"imported {res.tensors} encodings for {res.adapter} on {res.base} from {path}")
    if res.folded:
        click.echo(f"folded the adapter's alpha/r into {len(res.folded)} lora_B encoding(s)")
    if res.worst_clip:
        click.echo(f"warning: up to {100 * res.worst_clip:.1f}% of a weight tensor lies outside its encoding", err=True)
