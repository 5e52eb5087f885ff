"""Registry commands: init, db, register, base register, list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from loramgr.cli.common import Ctx, base_option, emit_json, human_size, json_option, parse_kv, pass_ctx, table
from loramgr.errors import UsageError
from loramgr.records import ADAPTER_STATUSES, Adapter
from loramgr.registry import db
from loramgr.sections.backends.qnn_ep import check_placement
from loramgr.targets import parse_targets


@click.command()
@json_option
@pass_ctx
def init(ctx: Ctx, as_json: bool) -> None:
    """Create the registry or upgrade it to the newest schema (other commands do this themselves)."""
    with db.opened(ctx.settings.db_url) as engine:
        applied = db.upgrade(engine)
        ctx.settings.store_dir.mkdir(parents=True, exist_ok=True)
        res = {
            "database": db.redact(ctx.settings.db_url),
            "store": str(ctx.settings.store_dir),
            "applied": applied,
            "revision": db.current_revision(engine),
        }
    if as_json:
        emit_json(res)
    else:
        click.echo(
            f"registry {res['database']} at revision {res['revision']}"
            + (f" (applied {', '.join(applied)})" if applied else " (up to date)")
        )


@click.group("db")
def db_group() -> None:
    """Inspect and upgrade the registry database schema."""


@db_group.command("upgrade")
@click.option("--list", "list_only", is_flag=True, help="List migrations and whether each is applied.")
@json_option
@pass_ctx
def db_upgrade(ctx: Ctx, list_only: bool, as_json: bool) -> None:
    """Apply pending migrations (or list them with --list)."""
    if list_only:
        with db.opened(ctx.settings.db_url) as engine:
            rows = db.migration_status(engine)
        if as_json:
            emit_json(rows)
        else:
            table(
                "migrations",
                ["revision", "applied", "message"],
                [(r["revision"], "yes" if r["applied"] else "no", r["message"]) for r in rows],
            )
        return
    with db.opened(ctx.settings.db_url) as engine:
        applied = db.upgrade(engine)
        revision = db.current_revision(engine)
    if as_json:
        emit_json({"applied": applied, "revision": revision})
    else:
        click.echo(f"applied {', '.join(applied)}" if applied else "already up to date")


@click.command()
@click.argument("path", type=click.Path(readable=False, exists=False))
@click.option("--name", help="Adapter name (default: the file's or directory's stem).")
@click.option("--version", "version", help="Version label (default: the next integer for this name).")
@click.option("--lora-alpha", type=float, help="lora_alpha when the adapter has no adapter_config.json.")
@base_option(required=False, help="The base model this adapter is meant for (a hint; needed by --encodings).")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Free-form tag; repeatable.")
@click.option("--link", is_flag=True, help="Hard-link into the store instead of copying (same filesystem).")
@click.option(
    "--encodings",
    "encodings_path",
    type=click.Path(readable=False, dir_okay=False),
    help="AIMET encodings for this adapter (needs --base; checked against its tensor names).",
)
@json_option
@pass_ctx
def register(
    ctx: Ctx,
    path: str,
    name: str | None,
    version: str | None,
    lora_alpha: float | None,
    base_ref: str | None,
    tags: tuple[str, ...],
    link: bool,
    encodings_path: str | None,
    as_json: bool,
) -> None:
    """Register a LoRA adapter: a .safetensors file or a PEFT adapter directory.

    Reads only the safetensors header, copies the file once into the content-addressed store while
    hashing it, and records every tensor. The same bytes again return the existing record.
    """
    rec, created = ctx.registry.register_adapter(
        path,
        name=name,
        version=version,
        lora_alpha=lora_alpha,
        base=base_ref,
        tags=parse_kv(tags, "--tag"),
        link=link,
        encodings=encodings_path,
    )
    if as_json:
        out = rec.to_json() | ({} if created else {"already_registered": True})
        if encodings_path and base_ref:  # what the same transaction stored
            enc = ctx.registry.encodings.get(ctx.registry.base(base_ref).id, rec.id)
            out["encodings"] = len(enc.activation) + len(enc.param)
        emit_json(out)
    elif created:
        click.echo(
            f"registered {rec.ref}  sha256 {rec.sha256[:12]}  rank {rec.rank}  "
            f"alpha {rec.lora_alpha}  {rec.dtype}  {rec.tensor_count} tensors  {human_size(rec.size)}"
        )
    else:
        click.echo(f"already registered as {rec.ref} (sha256 {rec.sha256[:12]})")


@click.command("register")
@click.argument("onnx_path", required=False, type=click.Path(readable=False))
@click.option("--name", required=True, help="Base model name.")
@click.option(
    "--graph",
    "graphs",
    multiple=True,
    metavar="GNAME=PATH",
    help="A graph of a multi-graph context (prefill/decode, parts); repeatable.",
)
@click.option("--version", "version", help="Version label (default: next integer).")
@click.option("--max-rank", type=int, help="Expected max rank; must match the graphs' LoRA inputs.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "int16"]),
    help="Precision of the LoRA weights (default: from the LoRA inputs' dtype).",
)
@click.option("--sdk-version", help="QAIRT SDK version the base context binary was built with.")
@click.option("--alpha-input", default="lora_alpha", show_default=True, help="Name of the alpha graph input.")
@click.option(
    "--quant-updatable-mode",
    type=click.Choice(["none", "adapter_only", "all"]),
    default="none",
    show_default=True,
    help="What qairt-converter's --quant_updatable_mode was.",
)
@click.option("--allow-empty", is_flag=True, help="Accept graphs without attachment points.")
@click.option(
    "--quant-point",
    "quant_points",
    multiple=True,
    metavar="TENSOR",
    help="An intermediate tensor to calibrate per adapter besides the graph I/O; repeatable.",
)
@click.option("--link", is_flag=True, help="Hard-link graph files into the store instead of copying.")
@click.option(
    "--htp-target",
    "htp_targets",
    metavar="SOC[,SOC...]",
    help="Refuse (exit 2, naming op and node) graphs Qualcomm's HTP cannot compile wholly for these SoCs, "
    "before anything is registered (the [qnn] extra; `build --backend qnn-ep` checks the same).",
)
@json_option
@pass_ctx
def base_register(
    ctx: Ctx,
    onnx_path: str | None,
    name: str,
    graphs: tuple[str, ...],
    version: str | None,
    max_rank: int | None,
    precision: str | None,
    sdk_version: str | None,
    alpha_input: str,
    quant_updatable_mode: str,
    allow_empty: bool,
    quant_points: tuple[str, ...],
    link: bool,
    htp_targets: str | None,
    as_json: bool,
) -> None:
    """Register a LoRA-ready base: one ONNX graph, or several with --graph NAME=PATH."""
    if onnx_path and graphs:
        raise UsageError("base register", "give either one ONNX file or --graph options, not both")
    pairs = [(Path(onnx_path).stem, onnx_path)] if onnx_path else list(parse_kv(graphs, "--graph").items())
    if htp_targets:
        for t in parse_targets(htp_targets):
            for graph, path in pairs:
                check_placement(Path(path), graph, t)
    rec, created = ctx.registry.register_base(
        pairs,
        name=name,
        version=version,
        max_rank=max_rank,
        precision=precision,
        sdk_version=sdk_version,
        alpha_input=alpha_input,
        allow_empty=allow_empty,
        link=link,
        quant_updatable_mode=quant_updatable_mode,
        details={"quantization_points": list(quant_points)} if quant_points else None,
    )
    if as_json:
        emit_json(rec.to_json() | ({} if created else {"already_registered": True}))
    else:
        verb = "registered" if created else "already registered as"
        click.echo(
            f"{verb} base {rec.ref}: graphs {', '.join(rec.graph_names)}; "
            f"{len(rec.attachment_points)} attachment points, max rank {rec.max_rank}, {rec.precision}"
        )


def _adapter_rows(rows: list[Adapter]) -> list[tuple[Any, ...]]:
    return [
        (
            r.ref,
            r.status,
            r.rank,
            r.lora_alpha,
            r.dtype,
            ",".join(r.target_modules) if isinstance(r.target_modules, tuple) else r.target_modules,
            r.tensor_count,
            human_size(r.size),
            r.sha256[:12],
        )
        for r in rows
    ]


ADAPTER_COLUMNS = ["adapter", "status", "rank", "alpha", "dtype", "targets", "tensors", "size", "sha256"]


@click.command("list")
@click.argument("what", type=click.Choice(["adapters", "bases"]), default="adapters")
@click.option("--status", type=click.Choice(ADAPTER_STATUSES), help="Only adapters with this status.")
@base_option(required=False, help="Only adapters meant for this base (registered for it or validated against it).")
@json_option
@pass_ctx
def list_cmd(ctx: Ctx, what: str, status: str | None, base_ref: str | None, as_json: bool) -> None:
    """List adapters (default) or bases."""
    if what == "adapters":
        rows = ctx.registry.adapters(status=status, base=base_ref)
        if as_json:
            emit_json(rows)
        else:
            table("adapters", ADAPTER_COLUMNS, _adapter_rows(rows))
    else:
        bases = ctx.registry.bases()
        if as_json:
            emit_json(bases)
        else:
            table(
                "bases",
                ["base", "status", "graphs", "attachment points", "max rank", "precision", "sdk"],
                [
                    (
                        r.ref,
                        r.status,
                        ",".join(r.graph_names),
                        len(r.attachment_points),
                        r.max_rank,
                        r.precision,
                        r.sdk_version,
                    )
                    for r in bases
                ],
            )
