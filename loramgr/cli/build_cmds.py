"""build."""

from __future__ import annotations

import click

from loramgr.cli.common import Ctx, base_option, emit_json, human_size, json_option, parse_kv, pass_ctx, table
from loramgr.errors import UsageError
from loramgr.records import Artifact, OwnerType
from loramgr.sections.pipeline import build as run


@click.command()
@click.argument("refs", nargs=-1)
@base_option()
@click.option("--all", "all_", is_flag=True, help="Every validated adapter of the base (the default without REFS).")
@click.option(
    "--backend",
    type=click.Choice(["ort", "qairt", "qnn-ep"]),
    default="ort",
    show_default=True,
    help="ort: .onnx_adapter sections (runs anywhere); qairt: the QAIRT SDK tools; qnn-ep: the base "
    "compiled for HTP targets (ONNX Runtime's QNN EP, the [qnn] extra) with .onnx_adapter sections.",
)
@click.option(
    "--target",
    "targets",
    metavar="SOC[,SOC...]",
    help="qnn-ep: the SoCs to compile for, e.g. sm8750,sc8380xp (`loramgr target list`).",
)
@click.option(
    "--share-adapters",
    is_flag=True,
    help="Super adapters: one section per group of graphs that "
    "share attachment points (prefill+decode) instead of one per graph.",
)
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True, help="Parallel workers.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(readable=False, file_okay=False),
    help="Output directory (default: $LORAMGR_HOME/builds/BASE@VERSION).",
)
@click.option(
    "--sdk-root",
    type=click.Path(readable=False, file_okay=False),
    envvar="QAIRT_SDK_ROOT",
    help="QAIRT SDK root for --backend qairt (default: $QAIRT_SDK_ROOT).",
)
@click.option(
    "--dlc",
    "dlcs",
    multiple=True,
    metavar="GRAPH=PATH",
    help="qairt: the base graph's DLC (converted with --lora_weight_list); default: convert it here.",
)
@click.option(
    "--htp-config", type=click.Path(readable=False, dir_okay=False), help="qairt: --config_file for the generator."
)
@click.option(
    "--tool-timeout",
    type=click.FloatRange(min=0.1),
    help="qairt: seconds before an SDK tool is stopped (default: $LORAMGR_TOOL_TIMEOUT or 3600).",
)
@click.option(
    "--lora-version",
    type=click.IntRange(2, 3),
    default=2,
    show_default=True,
    help="qairt: 2 = one adapter per section; 3 = QNN LoRA v3 (use cases, qairt-lora-model-creator).",
)
@click.option(
    "--quant-updatable",
    type=click.Choice(["none", "adapter_only", "all"]),
    help="qairt v3: which encodings switch with a use case (default: adapter_only, as the creator's).",
)
@click.option(
    "--precision",
    type=click.Choice(["int8", "int16", "qdq-u16u8", "qdq-u8u8"]),
    help="int8/int16: quantize the adapters' weights with their encodings (computed when calibration has "
    "not run); qdq-u16u8/qdq-u8u8 (qnn-ep): the base quantized for HTP (activations/weights), calibrated over "
    "every adapter of the build; default: the base's precision.",
)
@click.option("--force", is_flag=True, help="Rebuild even what is unchanged.")
@json_option
@pass_ctx
def build(
    ctx: Ctx,
    refs: tuple[str, ...],
    base_ref: str,
    all_: bool,
    backend: str,
    targets: str | None,
    share_adapters: bool,
    jobs: int,
    out_dir: str | None,
    sdk_root: str | None,
    dlcs: tuple[str, ...],
    htp_config: str | None,
    tool_timeout: float | None,
    lora_version: int,
    quant_updatable: str | None,
    precision: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Build binary sections for adapters of a base, plus the default (all-zero) adapter.

    Adapters are validated as a group first (exit 5 on any problem). Unchanged adapters are reused
    (content-hash cache); outputs are moved into place atomically.
    """
    if backend != "qairt" and (dlcs or htp_config or lora_version != 2 or quant_updatable):
        raise UsageError("--dlc/--htp-config/--lora-version/--quant-updatable", "only apply to --backend qairt")
    if targets and backend != "qnn-ep":
        raise UsageError(f"--target {targets}", "applies to --backend qnn-ep")
    quantize = None
    if precision and precision.startswith("qdq-"):
        if backend != "qnn-ep":
            raise UsageError(f"--precision {precision}", "applies to --backend qnn-ep (a quantized HTP target)")
        quantize, precision = precision, None
    if quant_updatable and lora_version != 3:
        raise UsageError(f"--quant-updatable {quant_updatable}", "applies to --lora-version 3")
    if lora_version == 3 and dlcs:
        raise UsageError("--dlc", "the v3 flow converts the model creator's base_model.onnx itself")
    opts = (
        {
            "sdk_root": sdk_root,
            "dlcs": parse_kv(dlcs, "--dlc"),
            "htp_config": htp_config,
            "tool_timeout": tool_timeout,
            "lora_version": lora_version,
            "quant_updatable": quant_updatable,
        }
        if backend == "qairt"
        else {"targets": targets, "quantize": quantize}
        if backend == "qnn-ep"
        else {}
    )
    res = run(
        ctx.registry,
        base_ref,
        list(refs),
        all_=all_,
        backend=backend,
        share_adapters=share_adapters,
        jobs=jobs,
        out_dir=out_dir,
        force=force,
        quiet=as_json,
        precision=precision,
        **opts,
    )
    if as_json:
        emit_json(res)
        return
    sections = [a for a in res.artifacts if a.is_section]
    table(
        f"build {res.build_id} ({res.backend}, share_adapters={res.share_adapters}) -> {res.out_dir}",
        ["owner", "kind", "graphs", "size", "sha256"],
        [(_owner(a), a.kind.value, "+".join(a.graphs), human_size(a.size), a.sha256[:12]) for a in sections],
    )
    owned = (OwnerType.ADAPTER, OwnerType.USE_CASE)
    click.echo(
        f"rebuilt {len(res.rebuilt)}, reused {len(res.reused)}; "
        f"{sum(a.size for a in sections if a.owner and a.owner.type in owned)} bytes of adapter and use-case sections"
    )


def _owner(a: Artifact) -> str:
    """Who a section belongs to, as the build table shows it."""
    if a.owner is None or a.owner.type is OwnerType.DEFAULT:
        return "(default)"
    return a.owner.name if a.owner.type is OwnerType.ADAPTER else a.owner.label
