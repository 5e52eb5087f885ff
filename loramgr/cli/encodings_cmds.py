"""calibrate and encodings show/import."""

from __future__ import annotations

from typing import Any

import click

from loramgr.cli.common import Ctx, cli, emit_json, json_option, pass_ctx, table


def encodings_base(reg: Any, adapter: dict[str, Any], base_ref: str | None) -> dict[str, Any]:
    """The base an adapter's encodings belong to: --base, else the only one it has (or is validated for)."""
    from loramgr.errors import UsageError
    from loramgr.registry.encodings import bases_with

    if base_ref:
        return reg.base(base_ref)
    ids = bases_with(reg, adapter["id"]) or sorted(
        b["id"] for b in reg.bases() if adapter["id"] in reg.validated_adapter_ids(b["id"]))
    if len(ids) != 1:
        raise UsageError(f"adapter {adapter['ref']}", f"has encodings for {len(ids)} bases; pass --base"
                         if ids else "is not validated for any base; pass --base")
    return next(b for b in (reg.base(x["ref"]) for x in reg.bases()) if b["id"] == ids[0])


@cli.command()
@click.argument("refs", nargs=-1)
@click.option("--base", "base_ref", required=True, help="Base model (NAME[@VERSION]).")
@click.option("--all", "all_", is_flag=True, help="Every validated adapter of the base (the default without REFS).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Calibration set: .npz (arrays named "
              "after graph inputs, first axis = samples) or .jsonl of input_ids.")
@click.option("--act-bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Activation encodings: asymmetric uint8/uint16.")
@click.option("--weight-bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Weight encodings: symmetric int8/int16.")
@click.option("--per-tensor", is_flag=True, help="One weight encoding per tensor instead of per output channel.")
@json_option
@pass_ctx
def calibrate(ctx: Ctx, refs: tuple[str, ...], base_ref: str, all_: bool, data: str, act_bits: str, weight_bits: str,
              per_tensor: bool, as_json: bool) -> None:
    """Compute per-adapter I/O activation encodings and weight encodings on the reference runtime."""
    from loramgr.calibrate import calibrate as run

    res = run(ctx.registry, base_ref, list(refs), all_=all_, data=data, act_bits=int(act_bits),
              weight_bits=int(weight_bits), per_tensor=per_tensor, quiet=as_json)
    if as_json:
        emit_json(res)
    else:
        table(f"calibrated on {data} (act {act_bits} bit, weights {weight_bits} bit)",
              ["adapter", "activation tensors", "param tensors"],
              [(a["adapter"], a["activation_tensors"], a["param_tensors"]) for a in res["adapters"]])


@cli.group("encodings")
def encodings_group() -> None:
    """Per-adapter quantization encodings (AIMET JSON)."""


@encodings_group.command("show")
@click.argument("ref")
@click.option("--base", "base_ref", help="Base model (default: the only one the adapter has encodings for).")
@click.option("--tensor", help="Only this tensor.")
@json_option
@pass_ctx
def encodings_show(ctx: Ctx, ref: str, base_ref: str | None, tensor: str | None, as_json: bool) -> None:
    """Print an adapter's encodings (`--json`: AIMET's layout). REF `default` with --base: the base's own."""
    from loramgr.errors import NotFoundError
    from loramgr.registry.encodings import load

    reg = ctx.registry
    if ref == "default" and base_ref:
        base, adapter_id, label = reg.base(base_ref), None, "default"
    else:
        ad = reg.adapter(ref)
        base, adapter_id, label = encodings_base(reg, ad, base_ref), ad["id"], ad["ref"]
    enc = load(reg, base["id"], adapter_id, tensor)
    if not enc:
        raise NotFoundError(f"encodings of {label} on {base['ref']}" + (f" for {tensor}" if tensor else ""),
                            "none stored", hint="run `loramgr calibrate` or `loramgr encodings import`")
    enc.pop("sources", None)
    if as_json:
        emit_json(enc)
        return
    rows = []
    for sec in ("activation_encodings", "param_encodings"):
        for name, entries in enc[sec].items():
            e = entries[0]
            rows.append((sec.split("_")[0], name, len(entries), e["bitwidth"], e["is_symmetric"],
                         f"{e.get('min', 0):.4g}", f"{e.get('max', 0):.4g}", f"{e.get('scale', 0):.4g}", e.get("offset")))
    table(f"encodings of {label} on {base['ref']}", ["kind", "tensor", "channels", "bits", "symmetric", "min", "max",
                                                      "scale", "offset"], rows)


@encodings_group.command("import")
@click.argument("ref")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--base", "base_ref", help="Base model (default: the only one the adapter is validated for).")
@json_option
@pass_ctx
def encodings_import(ctx: Ctx, ref: str, path: str, base_ref: str | None, as_json: bool) -> None:
    """Attach AIMET encodings to an adapter; they replace what calibration computed for the tensors
    they name and are checked against the base's tensor names (exit 4 on anything unknown)."""
    from loramgr.formats.encodings import load as load_file
    from loramgr.registry.encodings import check_names, store

    reg = ctx.registry
    ad = reg.adapter(ref)
    base = encodings_base(reg, ad, base_ref)
    enc = load_file(path)
    check_names(enc, base, path)
    n = store(reg, base["id"], ad["id"], enc, "import")
    res = {"adapter": ad["ref"], "base": base["ref"], "tensors": n, "file": path}
    if as_json:
        emit_json(res)
    else:
        click.echo(f"imported {n} encodings for {ad['ref']} on {base['ref']} from {path}")
