"""usecase create/list/show/remove: adapters active together on a base with alpha slots."""

from __future__ import annotations

import math

import click

from loramgr.cli.common import Ctx, base_option, emit_json, json_option, pass_ctx, table
from loramgr.records import UseCase


def _alphas(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers, e.g. 1,0.5", param_hint="--alphas") from None
    if len(values) != n:
        raise click.BadParameter(f"{len(values)} alphas for {n} adapters", param_hint="--alphas")
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter("alphas must be finite numbers", param_hint="--alphas")
    return values


def _show(uc: UseCase) -> None:
    table(
        f"use case {uc.name} on {uc.base}" + (" (hot switch)" if uc.hot else ""),
        ["slot", "adapter", "default alpha"],
        [(s.slot, s.adapter, s.default_alpha) for s in uc.slots],
    )


@click.group("usecase", invoke_without_command=True)
@click.pass_context
def usecase_group(cctx: click.Context) -> None:
    """Use cases: several adapters active at once (QNN LoRA v3), each scaled by its own alpha slot.

    The base needs alpha slots (`base export --max-adapters N`). Without a subcommand: `list`.
    """
    if cctx.invoked_subcommand is None:
        cctx.invoke(usecase_list)


@usecase_group.command("create")
@click.argument("name")
@click.argument("adapters", nargs=-1, required=True)
@base_option()
@click.option("--alphas", help="Default alphas, one per adapter in order (default: 1 each), e.g. 1,0.5.")
@click.option("--hot", is_flag=True, help="Hot switch: one section holds every adapter; switch by alpha alone.")
@json_option
@pass_ctx
def usecase_create(
    ctx: Ctx, name: str, adapters: tuple[str, ...], base_ref: str, alphas: str | None, hot: bool, as_json: bool
) -> None:
    """Create use case NAME on a base: ADAPTERS in slot order. Refused (exit 5, every problem listed)
    when there are more adapters than alpha slots or their ranks add up past an attachment point's."""
    uc = ctx.registry.use_cases.create(name, base_ref, list(adapters), alphas=_alphas(alphas, len(adapters)), hot=hot)
    if as_json:
        emit_json(uc)
    else:
        click.echo(f"created use case {uc.name} on {uc.base}: {', '.join(uc.adapters)}")


@usecase_group.command("list")
@base_option(required=False, help="Only the use cases of this base.")
@json_option
@pass_ctx
def usecase_list(ctx: Ctx, base_ref: str | None = None, as_json: bool = False) -> None:
    """List use cases (of one base, or all)."""
    ucs = ctx.registry.use_cases.list(base_ref)
    if as_json:
        emit_json(ucs)
    else:
        table(
            "use cases",
            ["use case", "base", "adapters", "alphas", "hot"],
            [(u.name, u.base, ", ".join(u.adapters), ",".join(f"{a:g}" for a in u.alphas), u.hot) for u in ucs],
        )


@usecase_group.command("show")
@click.argument("name")
@base_option()
@json_option
@pass_ctx
def usecase_show(ctx: Ctx, name: str, base_ref: str, as_json: bool) -> None:
    """Show a use case: its adapters by slot and their default alphas."""
    uc = ctx.registry.use_cases.get(name, base_ref)
    if as_json:
        emit_json(uc)
    else:
        _show(uc)


@usecase_group.command("remove")
@click.argument("name")
@base_option()
@json_option
@pass_ctx
def usecase_remove(ctx: Ctx, name: str, base_ref: str, as_json: bool) -> None:
    """Remove a use case (its adapters stay)."""
    uc = ctx.registry.use_cases.remove(name, base_ref)
    if as_json:
        emit_json(uc)
    else:
        click.echo(f"removed use case {uc.name} from {uc.base}")


@click.group("group", invoke_without_command=True)
@click.pass_context
def group_group(cctx: click.Context) -> None:
    """Groups of use cases that share quantization parameters (QNN LoRA v3 grouped LoRA).

    With integer LoRA (`base export --quantized-lora`), the ort backend computes a group's scales over
    all its members and stores them once, as a quantization section; switching inside a group applies
    only the weights section. Without a subcommand: `list`.
    """
    if cctx.invoked_subcommand is None:
        cctx.invoke(group_list)


@group_group.command("create")
@click.argument("name")
@click.argument("use_cases", nargs=-1, required=True)
@base_option()
@json_option
@pass_ctx
def group_create(ctx: Ctx, name: str, use_cases: tuple[str, ...], base_ref: str, as_json: bool) -> None:
    """Create group NAME of USE_CASES on a base (a use case is in one group at most: exit 6)."""
    members = ctx.registry.use_cases.create_group(name, base_ref, list(use_cases))
    if as_json:
        emit_json({"name": name, "base": members[0].base, "use_cases": [u.name for u in members]})
    else:
        click.echo(f"created group {name} on {members[0].base}: {', '.join(u.name for u in members)}")


@group_group.command("list")
@base_option(required=False, help="Only the groups of this base.")
@json_option
@pass_ctx
def group_list(ctx: Ctx, base_ref: str | None = None, as_json: bool = False) -> None:
    """List groups and their use cases (of one base, or all)."""
    groups = ctx.registry.use_cases.all_groups(base_ref)
    rows = [{"name": g, "base": b, "use_cases": [u.name for u in ucs]} for (b, g), ucs in groups.items()]
    if as_json:
        emit_json(rows)
    else:
        table(
            "groups", ["group", "base", "use cases"], [(r["name"], r["base"], ", ".join(r["use_cases"])) for r in rows]
        )


@group_group.command("remove")
@click.argument("name")
@base_option()
@json_option
@pass_ctx
def group_remove(ctx: Ctx, name: str, base_ref: str, as_json: bool) -> None:
    """Dissolve a group (its use cases stay)."""
    members = ctx.registry.use_cases.remove_group(name, base_ref)
    if as_json:
        emit_json({"name": name, "use_cases": [u.name for u in members]})
    else:
        click.echo(f"removed group {name} ({', '.join(u.name for u in members)})")
