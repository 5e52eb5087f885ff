"""target list: the SoCs the HTP backend compiles for."""

from __future__ import annotations

import click

from loramgr.cli.common import emit_json, json_option, table
from loramgr.targets import TARGETS


@click.group("target", invoke_without_command=True)
@click.pass_context
def target_group(ctx: click.Context) -> None:
    """HTP targets: Snapdragon SoCs by part number (`build --backend qnn-ep --target`)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@target_group.command("list")
@json_option
def target_list(as_json: bool) -> None:
    """Every SoC the HTP backend knows: part number, QNN soc_model, HTP architecture, other names
    (from Qualcomm's QNN SDK table of supported Snapdragon devices)."""
    if as_json:
        emit_json([t.to_json() for t in TARGETS])
        return
    table(
        "HTP targets",
        ["name", "soc_model", "htp_arch", "aliases"],
        [(t.name, t.soc_model, f"v{t.htp_arch}", ", ".join(t.aliases)) for t in TARGETS],
    )
