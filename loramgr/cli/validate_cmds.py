"""validate and weight-list."""

from __future__ import annotations

import click

from loramgr.cli.common import Ctx, base_option, emit_json, json_option, pass_ctx, table
from loramgr.deploy.weightlist import render, write_weight_lists
from loramgr.errors import IncompatibleError, UsageError
from loramgr.validation import validate as run


@click.command()
@click.argument("refs", nargs=-1)
@base_option(help="Base model to validate against (NAME[@VERSION]).")
@click.option("--all", "all_", is_flag=True, help="Also every adapter meant for this base, checked as a group.")
@json_option
@pass_ctx
def validate(ctx: Ctx, refs: tuple[str, ...], base_ref: str, all_: bool, as_json: bool) -> None:
    """Check adapters against a base and report every problem at once (exit 5 if any).

    A pass is recorded: the adapter becomes `validated` for that base.
    """
    if not refs and not all_:
        raise UsageError("validate", "name at least one adapter, or use --all")
    report = run(ctx.registry, list(refs), base_ref, all_=all_)
    if as_json:
        emit_json(report)
    else:
        for a in report.adapters:
            status = "compatible" if a.compatible else "INCOMPATIBLE"
            click.echo(
                f"{a.adapter}: {status} with {report.base} (rank {a.rank}, "
                f"base max rank {report.max_rank}, {report.precision})"
            )
            rows = [("error", p.code, p.subject, p.message, p.hint) for p in a.problems]
            rows += [("warning", w.code, w.subject, w.message, w.hint) for w in a.warnings]
            if rows:
                table(None, ["severity", "code", "subject", "problem", "fix"], rows)
        g = report.group
        if g:
            click.echo(
                f"group of {len(g.adapters)}: effective max rank {g.effective_max_rank} "
                f"(base {g.base_max_rank}), {g.attachment_points} attachment points"
                + ("" if not g.problems else f"; {len(g.problems)} group problem(s)")
            )
            for p in g.problems:
                click.echo(f"  {p.code}: {p.message}")
    if not report.compatible:
        err = IncompatibleError(
            ", ".join(report.incompatible) or report.base,
            f"incompatible with base {report.base} ({', '.join(report.codes)})",
            details=report.to_json(),
        )
        err.reported = as_json  # the report above is the machine-readable output; only the line goes to stderr
        raise err


@click.command("weight-list")
@base_option()
@click.option(
    "-o", "--output", type=click.Path(readable=False, dir_okay=False), help="File to write (default: stdout)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["qairt", "json"]),
    default="qairt",
    show_default=True,
    help="qairt: newline-delimited names for --lora_weight_list; json: per-graph lists.",
)
@click.option("--include-alpha", is_flag=True, help="Also list the alpha input.")
@json_option
@pass_ctx
def weight_list(ctx: Ctx, base_ref: str, output: str | None, fmt: str, include_alpha: bool, as_json: bool) -> None:
    """Write the updatable tensor names for `qairt-converter --lora_weight_list`.

    One file for all graphs when they share attachment points, else one per graph (FILE.<graph>.txt).
    """
    base = ctx.registry.base(base_ref)
    res = write_weight_lists(base, output, include_alpha=include_alpha, fmt=fmt)
    if as_json:
        emit_json(res)
    elif output is None:
        if fmt == "json":
            emit_json({"base": res.base, "graphs": res.lists})
        elif res.shared:
            click.echo(render(next(iter(res.lists.values()), [])), nl=False)
        else:
            for g, names in res.lists.items():
                click.echo(f"# graph {g}")
                click.echo(render(names), nl=False)
    else:
        by_file: dict[str, list[str]] = {}
        for g, f in res.files.items():
            by_file.setdefault(f, []).append(g)
        for f, graphs in by_file.items():  # one file serves every graph that shares the list
            n = len(res.lists[graphs[0]])
            click.echo(f"{f}: {n} names, for graph{'s' if len(graphs) > 1 else ''} {', '.join(graphs)}")
        if any(n.endswith(".lora_indices") for names in res.lists.values() for n in names):
            click.echo(
                "(the *.lora_indices names are the alpha-slot maps of a base with --max-adapters: updatable "
                "like the LoRA weights, they tell each rank column which adapter's alpha scales it)"
            )
