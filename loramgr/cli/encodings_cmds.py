"""calibrate and encodings show/import."""

from __future__ import annotations

import click

from loramgr.calibration import calibrate as run
from loramgr.cli.common import Ctx, base_option, emit_json, json_option, pass_ctx, table


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
    as_json: bool,
) -> None:
    """Compute per-adapter I/O activation encodings and weight encodings on the reference runtime."""
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
    else:
        table(
            f"calibrated on {data} (act {act_bits} bit, weights {weight_bits} bit)",
            ["adapter", "activation tensors", "param tensors"],
            [(a.adapter, a.activation_tensors, a.param_tensors) for a in res.adapters],
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
@json_option
@pass_ctx
def encodings_import(ctx: Ctx, ref: str, path: str, base_ref: str | None, as_json: bool) -> None:
    """Attach AIMET encodings to an adapter; they replace what calibration computed for the tensors
    they name and are checked against the base's tensor names (exit 4 on anything unknown)."""
    res = ctx.registry.encodings.import_file(ref, path, base_ref)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"imported {res.tensors} encodings for {res.adapter} on {res.base} from {path}")
