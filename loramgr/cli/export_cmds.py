"""base export (needs the [export] extra; torch is imported only when the command runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loramgr.cli.common import Ctx, emit_json, json_option, pass_ctx, table
from loramgr.export import ExportOptions, export_and_register, parse_bytes, quiet_transformers


@click.command("export")
@click.argument("hf_dir", type=click.Path(readable=False, exists=True, file_okay=False))
@click.option("--name", required=True, help="Base model name to register.")
@click.option(
    "--target-modules",
    required=True,
    help="Comma-separated projections, e.g. q_proj,v_proj (Llama/Mistral/Qwen2) or c_attn,c_proj,c_fc (GPT-2).",
)
@click.option("--max-rank", type=click.IntRange(min=1), required=True, help="Rank of the LoRA inputs.")
@click.option(
    "-o", "--out", "out_dir", type=click.Path(readable=False, file_okay=False), required=True, help="Output directory."
)
@click.option(
    "--graphs",
    default="prefill=128,decode=1",
    show_default=True,
    help="NAME=SEQ_LEN pairs; graphs named prefill* have no KV-cache inputs.",
)
@click.option(
    "--context-len",
    type=click.IntRange(min=2),
    help="KV-cache length (default: max(256, 2 x longest graph), capped by the model's max positions).",
)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option(
    "--max-part-bytes",
    default="2GB",
    show_default=True,
    help="Split by decoder layers so each part's weights stay under this (protobuf's 2 GB limit).",
)
@click.option(
    "--quantized-lora",
    type=click.Choice(["8", "16"]),
    help="Integer LoRA inputs (int8/int16) with "
    "per-channel `<input>_scale` inputs feeding DequantizeLinear: sections then carry quantized weights.",
)
@click.option(
    "--max-adapters",
    type=click.IntRange(min=1, max=1024),
    help="Alpha slots for use cases (adapters active at once): lora_alpha [1, N] and <module>.lora_indices "
    "[1, R] inputs. Without it: one scalar alpha, one adapter at a time.",
)
@click.option("--sdk-version", help="QAIRT SDK version recorded on the registered base.")
@click.option("--no-register", is_flag=True, help="Only write the graphs.")
@json_option
@pass_ctx
def base_export(
    ctx: Ctx,
    hf_dir: str,
    name: str,
    target_modules: str,
    max_rank: int,
    out_dir: str,
    graphs: str,
    context_len: int | None,
    precision: str,
    max_part_bytes: str,
    quantized_lora: str | None,
    max_adapters: int | None,
    sdk_version: str | None,
    no_register: bool,
    as_json: bool,
) -> None:
    """Export a local Hugging Face causal LM to LoRA-ready ONNX graphs and register them as a base.

    Every target projection gets `<module>.lora_A.weight [in, R]` / `.lora_B.weight [R, out]` graph
    inputs (zero defaults) and one `lora_alpha` input; prefill/decode graphs share weights on disk.
    """
    targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    say = None if as_json else (lambda s: print(s, file=sys.stderr, flush=True))
    options = ExportOptions(
        targets=targets,
        max_rank=max_rank,
        graphs=graphs,
        context_len=context_len,
        precision=precision,
        max_part_bytes=parse_bytes(max_part_bytes),
        quantized_lora=int(quantized_lora) if quantized_lora else None,
        max_adapters=max_adapters,
    )
    res = export_and_register(
        None if no_register else ctx.registry,
        hf_dir,
        out_dir,
        options,
        name=name,
        sdk_version=sdk_version,
        progress=say,
    )
    if as_json:
        emit_json(res)
        return
    man = res.export
    table(
        f"exported {man['model_type']} -> {res.out_dir}",
        ["graph", "kind", "part", "layers", "q", "past"],
        [
            (g["name"], g["kind"], g["part"] + 1, f"{g['layers'][0]}..{g['layers'][1] - 1}", g["q_len"], g["past_len"])
            for g in man["graphs"]
        ],
    )
    if res.base:
        b = res.base
        click.echo(f"registered base {b.ref}: {len(b.attachment_points)} attachment points, max rank {b.max_rank}")


@click.command("demo-model")
@click.argument("family")
@click.option(
    "-o", "--out", "out_dir", type=click.Path(readable=False, file_okay=False), required=True, help="Output directory."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--adapters", type=click.IntRange(min=0, max=16), default=2, show_default=True, help="PEFT adapters.")
@json_option
@pass_ctx
def demo_model(ctx: Ctx, family: str, out_dir: str, seed: int, adapters: int, as_json: bool) -> None:
    """Write a tiny seeded Hugging Face model of FAMILY (and PEFT adapters for it) to try loramgr without
    a model hub: OUT/model, OUT/adapter-N. FAMILY: llama, gpt2, or a family `base export` is tested on."""
    from loramgr.export.tiny import write_demo_model

    quiet_transformers()
    out = Path(out_dir)
    res = write_demo_model(family, out, seed=seed, adapters=adapters)
    if as_json:
        emit_json(res)
        return
    targets = res.target_modules
    made = res.adapters
    click.echo(f"wrote {out / 'model'} and {len(made)} adapter(s); next:")
    click.echo(
        f"  loramgr base export {out / 'model'} --name {family}-tiny --target-modules {','.join(targets)} "
        f"--max-rank 16 --graphs prefill=16,decode=1 --context-len 64 -o {out / 'onnx'}"
    )
