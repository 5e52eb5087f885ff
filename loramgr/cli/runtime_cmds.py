"""run and verify: the plan on the reference runtime."""

from __future__ import annotations

import math
from typing import Any

import click

from loramgr.cli.common import Ctx, emit_json, json_option, pass_ctx, table
from loramgr.errors import IncompatibleError, UsageError
from loramgr.runtime.ort import Htp, generate
from loramgr.verification import verify


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,2,3", param_hint="--input-ids") from None
    if not ids or min(ids) < 0:
        raise click.BadParameter("expected at least one non-negative token id", param_hint="--input-ids")
    return ids


def _alpha(text: str | None) -> float | dict[str, float] | None:
    """``0.5`` (every slot) or ``a=0.5,b=1`` (per adapter of a use case); finite numbers only."""
    if text is None:
        return None
    try:
        if "=" not in text:
            value = float(text)
            out: float | dict[str, float] = value
            values = [value]
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            out = {k.strip(): float(v) for k, v in pairs}
            values = list(out.values())
    except ValueError:
        raise click.BadParameter(
            "expected a number or NAME=NUMBER pairs, e.g. a=0.5,b=1", param_hint="--alpha"
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise click.BadParameter("alphas must be finite numbers", param_hint="--alpha")
    return out


def _device_options(f: Any) -> Any:
    """--device / --target / --htp-fp32, the same for `run` and `verify` (read with :func:`_htp`)."""
    options = [
        click.option(
            "--device",
            type=click.Choice(["cpu", "htp"]),
            default="cpu",
            show_default=True,
            help="cpu: ONNX Runtime's CPU; htp: Qualcomm's HTP backend (the [qnn] extra; on x86 its simulator).",
        ),
        click.option("--target", help="htp: the compiled target of the plan to run (e.g. sm8750)."),
        click.option(
            "--htp-fp32",
            is_flag=True,
            help="htp: the plan's own graphs in the simulator's fp32 mode instead of the target's SoC numerics.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _htp(device: str, target: str | None, htp_fp32: bool) -> Any:
    """The --device/--target/--htp-fp32 triple as the runtime's ``Htp`` (None: the CPU)."""
    if device != "htp":
        if target or htp_fp32:
            raise UsageError("--target/--htp-fp32", "apply to --device htp")
        return None
    if not target:
        raise UsageError("--device htp", "needs --target (a target the plan was built for)")
    return Htp(target, htp_fp32)


@click.command("run")
@click.option("--plan", "plan_path", required=True, type=click.Path(readable=False, dir_okay=False), help="plan.json.")
@click.option("--adapter", default="default", show_default=True, help="Adapter name (or `default`: the base).")
@click.option("--use-case", "use_case", help="A use case of the plan: its adapters active together.")
@click.option(
    "--alpha",
    help="LoRA strength: one number for every adapter, or per adapter of a use case (a=0.5,b=1); "
    "default: the plan's alphas.",
)
@click.option("--input-ids", "input_ids", required=True, help="Prompt token ids, comma-separated.")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True, help="Tokens to generate.")
@click.option(
    "--share-weights/--no-share-weights",
    default=True,
    show_default=True,
    help="One memory-mapped copy of the weights for the prefill and decode sessions (about half the "
    "memory; ONNX Runtime's weight pre-packing off: prefill ~1.4x, decode ~1.1x slower); the default adapter then "
    "runs the graph without its LoRA branches, over the same weights.",
)
@_device_options
@json_option
def run_cmd(
    plan_path: str,
    adapter: str,
    use_case: str | None,
    alpha: str | None,
    input_ids: str,
    steps: int,
    share_weights: bool,
    device: str,
    target: str | None,
    htp_fp32: bool,
    as_json: bool,
) -> None:
    """Greedy tokens through the plan on the ONNX Runtime reference runtime (prefill, then decode
    with the KV cache when the plan has a decode graph), or with --device htp on a compiled target."""
    if use_case and adapter != "default":
        raise click.UsageError("give --adapter or --use-case, not both")
    prompt = _ids(input_ids)
    alphas = _alpha(alpha)
    htp = _htp(device, target, htp_fp32)
    gen = generate(plan_path, prompt, steps, use_case or adapter, alphas, share_weights=share_weights, htp=htp)
    res = {
        "adapter": use_case or adapter,
        "use_case": use_case,
        "alpha": alphas,
        "input_ids": prompt,
        "tokens": gen.tokens,
        "graphs": gen.graphs,
    } | ({"device": "htp", "target": target, "htp_fp32": htp_fp32} if htp else {})
    if as_json:
        emit_json(res)
    else:
        click.echo(
            f"{use_case or adapter} (alpha {alpha if alpha is not None else 'default'}): "
            f"{' '.join(map(str, prompt))} -> {' '.join(map(str, gen.tokens))}"
        )


@click.command("verify")
@click.option("--plan", "plan_path", required=True, type=click.Path(readable=False, dir_okay=False), help="plan.json.")
@click.option("--adapter", "adapters", multiple=True, help="Adapter(s) to check (default: all in the plan).")
@click.option(
    "--hf-dir",
    type=click.Path(readable=False, file_okay=False),
    help="The base's Hugging Face directory (default: from its `base export` manifest).",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "peft", "sections"]),
    default="auto",
    show_default=True,
    help="peft: logits vs the PEFT model; sections: tensors and graph runs vs loramgr's numpy reference.",
)
@click.option(
    "--tolerance",
    type=float,
    help="Max abs diff allowed (default 1e-4 fp32, 2e-2 fp16); with --device htp, the max relative error "
    "(default 3e-2) or, on a quantized target, the min cosine (0.99 qdq-u16u8, 0.98 qdq-u8u8).",
)
@click.option("--input-ids", "input_ids", help="Prompt for the peft mode (default: a fixed sequence).")
@_device_options
@json_option
@pass_ctx
def verify_cmd(
    ctx: Ctx,
    plan_path: str,
    adapters: tuple[str, ...],
    hf_dir: str | None,
    mode: str,
    tolerance: float | None,
    input_ids: str | None,
    device: str,
    target: str | None,
    htp_fp32: bool,
    as_json: bool,
) -> None:
    """Check every adapter of a plan against a reference; exit 5 when one is beyond tolerance. With
    --device htp, the compiled target runs on Qualcomm's HTP backend (docs/htp.md has the criteria)."""
    res = verify(
        ctx.registry,
        plan_path,
        list(adapters),
        hf_dir=hf_dir,
        tolerance=tolerance,
        mode=mode,
        input_ids=_ids(input_ids) if input_ids else None,
        htp=_htp(device, target, htp_fp32),
    )
    if as_json:
        if res.ok:
            emit_json(res)
    else:
        soc = any(r.rel_error is not None for r in res.adapters)
        table(
            f"verify {plan_path} ({res.mode}{', HTP ' + target if target else ''})",
            ["adapter", "max abs diff", "cosine", *(["rel error", "top-1"] if soc else []), "tolerance", "ok"],
            [
                (
                    r.adapter,
                    f"{r.max_abs_diff:.2e}",
                    f"{r.cosine:.6f}",
                    *([f"{r.rel_error:.2e}", f"{r.top1_agreement:.3f}"] if soc else []),
                    f"{r.tolerance:g}",
                    "yes" if r.ok else "NO",
                )
                for r in res.adapters
            ],
        )
    if not res.ok:
        raise IncompatibleError(
            ", ".join(res.failed), "differs from its reference beyond the tolerance", details=res.to_json()
        )
