"""plan and bundle."""

from __future__ import annotations

import click

from loramgr.cli.common import Ctx, base_option, emit_json, human_size, json_option, pass_ctx, table
from loramgr.deploy.bundle import check_bundle, write_bundle
from loramgr.deploy.plan import schema, write_plan
from loramgr.errors import UsageError
from loramgr.runtime import Plan


@click.command()
@base_option(required=False, help="Base model (NAME[@VERSION]); required unless --schema.")
@click.option("--build", "build_id", type=int, help="Build id (default: the base's newest finished build).")
@click.option(
    "-o", "--out", type=click.Path(readable=False, dir_okay=False), help="Plan file (default: BUILD_OUT/plan.json)."
)
@click.option("--schema", "show_schema", is_flag=True, help="Print the plan's JSON Schema and exit.")
@click.option(
    "--genie-config",
    type=click.Path(readable=False, dir_okay=False),
    help="Also write the Genie `lora` config block "
    "(one bin-section per context binary, in context order) to this file.",
)
@click.option(
    "--qnn-ep-configs",
    type=click.Path(readable=False, file_okay=False),
    help="Also write, for ONNX Runtime's QNN EP (run option qnn.lora_config), one "
    "`<graph>;<section>` file per graph and adapter or use case into this directory.",
)
@json_option
@pass_ctx
def plan(
    ctx: Ctx,
    base_ref: str | None,
    build_id: int | None,
    out: str | None,
    show_schema: bool,
    genie_config: str | None,
    qnn_ep_configs: str | None,
    as_json: bool,
) -> None:
    """Write the versioned runtime plan (plan.json) of a build: sections, encodings, alpha, steps.

    Paths in the plan are relative to its directory; every file carries sha256 and size.
    """
    if show_schema:
        emit_json(schema())
        return
    if not base_ref:
        raise UsageError("plan", "--base is required")
    res = write_plan(ctx.registry, base_ref, build_id, out, genie_config=genie_config, qnn_ep_configs=qnn_ep_configs)
    if as_json:
        emit_json(res)
    else:
        click.echo(
            f"wrote {res.plan} (build {res.build_id}; adapters {', '.join(res.adapters)}"
            + (f"; use cases {', '.join(res.use_cases)}" if res.use_cases else "")
            + ")"
            + (f"; Genie config {res.genie_config}" if res.genie_config else "")
            + (f"; {len(res.qnn_ep_configs)} QNN EP config(s)" if res.qnn_ep_configs else "")
        )


@click.group(invoke_without_command=True)
@click.option("--plan", "plan_path", type=click.Path(readable=False, dir_okay=False), help="plan.json to bundle.")
@click.option("-o", "--out", type=click.Path(readable=False), help="Bundle file (tar) or, with --dir, directory.")
@click.option("--dir", "as_dir", is_flag=True, help="Write a directory instead of a tar.")
@json_option
@click.pass_context
def bundle(cctx: click.Context, plan_path: str | None, out: str | None, as_dir: bool, as_json: bool) -> None:
    """Make a device bundle: plan + graphs + sections + SHA256SUMS (reproducible tar).

    Refuses (exit 8) when any file does not match the checksum the plan records.
    """
    if cctx.invoked_subcommand is not None:
        return
    if not plan_path or not out:
        raise UsageError("bundle", "give --plan PLAN and -o OUT (or use `loramgr bundle check BUNDLE`)")
    res = write_bundle(plan_path, out, as_dir=as_dir)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"wrote {res.bundle}: {res.files} files, {human_size(res.bytes)}")


@bundle.command("check")
@click.argument("path", type=click.Path(readable=False, exists=True))
@json_option
def bundle_check(path: str, as_json: bool) -> None:
    """Verify a bundle (tar or directory): safe paths, regular files, every checksum (exit 8 on mismatch)."""
    res = check_bundle(path)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"{res.bundle}: {res.files} files verified")


@click.command("plan-show")
@click.argument("plan_path", type=click.Path(readable=False, dir_okay=False))
@click.option("--adapter", help="Show one adapter's sections, encodings and steps.")
@click.option("--use-case", "use_case", help="Show one use case: its slots, alphas, sections and steps.")
@json_option
def plan_show(plan_path: str, adapter: str | None, use_case: str | None, as_json: bool) -> None:
    """Query a plan through the runtime API (what device code sees)."""
    if adapter and use_case:
        raise click.UsageError("give --adapter or --use-case, not both")
    p = Plan.load(plan_path)
    name = adapter or use_case
    if name:
        e = p.use_case(name) if use_case else p.adapter(name)
        res: dict[str, object] = {
            "adapter": e.ref,
            "sections": [
                {
                    "name": s.name,
                    "kind": s.kind.value if s.kind else None,
                    "owner": {"type": s.owner.type.value, "name": s.owner.name} if s.owner else None,
                    "graphs": list(s.graphs),
                    "path": str(s.path),
                    "size": s.size,
                }
                for s in e.sections()
            ],
            "io_encodings": e.io_encodings(),
            "steps": e.steps(),
        }
        if use_case:
            res |= {"use_case": name, "slots": e.adapters, "alphas": e.alphas, "group": p.use_case(name).group}
    else:
        res = {
            "adapters": list(p.adapters),
            "use_cases": list(p.use_cases),
            "graphs": list(p.graphs),
            "rules": p.rules,
            "targets": {
                n: {k: t[k] for k in ("soc_model", "htp_arch", "qnn_version", "precision")}
                for n, t in p.targets.items()
            },
        }
    if as_json:
        emit_json(res)
    elif name:
        if use_case:
            click.echo(
                f"use case {name}: "
                + ", ".join(f"slot {slot} {a} (alpha {e.alphas[slot]:g})" for a, slot in e.adapters.items())
                + (f"; group {res['group']}" if res.get("group") else "")
            )
        table(
            f"sections of {e.ref}",
            ["section", "kind", "graphs", "size", "path"],
            [
                (s.name, s.kind.value if s.kind else "", "+".join(s.graphs), human_size(s.size), str(s.path))
                for s in e.sections()
            ],
        )
        table(
            "steps",
            ["#", "op", "details"],
            [(i, s["op"], {k: v for k, v in s.items() if k != "op"}) for i, s in enumerate(e.steps(), 1)],
        )
    else:
        click.echo(
            f"adapters: {', '.join(p.adapters)}\n"
            f"use cases: {', '.join(p.use_cases) or 'none'}\ngraphs: {', '.join(p.graphs)}"
        )
        if p.targets:
            table(
                "HTP targets",
                ["target", "soc_model", "htp_arch", "QNN", "graphs (device: shared context)"],
                [
                    (n, t["soc_model"], f"v{t['htp_arch']}", t["qnn_version"], ", ".join(sorted(t["graphs"])))
                    for n, t in p.targets.items()
                ],
            )
        table("rules", ["rule", "value"], sorted(p.rules.items()))
