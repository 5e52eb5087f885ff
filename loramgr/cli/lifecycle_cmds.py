"""promote, retire, history, gc, fsck, export-registry, import-registry."""

from __future__ import annotations

import click

from loramgr.cli.common import Ctx, emit_json, human_size, json_option, pass_ctx, table
from loramgr.errors import IntegrityError


@click.command()
@click.argument("ref")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Choice(["built", "deployed"]),
    help="Target stage (deployed only from built).",
)
@json_option
@pass_ctx
def promote(ctx: Ctx, ref: str, to: str, as_json: bool) -> None:
    """Move an adapter to a later stage (registered -> validated -> built -> deployed -> retired)."""
    res = ctx.registry.lifecycle.promote(ref, to)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"{res.adapter}: {res.status}" + ("" if res.changed else " (unchanged)"))


@click.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Retire even though an active plan still lists it.")
@json_option
@pass_ctx
def retire(ctx: Ctx, ref: str, force: bool, as_json: bool) -> None:
    """Retire an adapter (refused while an active plan references it; exit 6)."""
    res = ctx.registry.lifecycle.retire(ref, force)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"{res.adapter}: retired" + (" (forced)" if res.forced else ""))


@click.command()
@click.argument("ref")
@json_option
@pass_ctx
def history(ctx: Ctx, ref: str, as_json: bool) -> None:
    """The audit trail of an adapter: who did what, when."""
    rows = ctx.registry.lifecycle.history(ref)
    if as_json:
        emit_json(rows)
    else:
        table(
            f"history of {ref}",
            ["at", "actor", "action", "details"],
            [(r.at, r.actor, r.action, ", ".join(f"{k}={v}" for k, v in r.details.items())) for r in rows],
        )


@click.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--retired", is_flag=True, help="Also collect the files of retired adapters.")
@click.option(
    "--grace", type=float, default=3600, show_default=True, help="Never collect objects younger than this many seconds."
)
@json_option
@pass_ctx
def gc(ctx: Ctx, dry_run: bool, retired: bool, grace: float, as_json: bool) -> None:
    """Delete store files that no live registry row references."""
    res = ctx.registry.maintenance.gc(dry_run=dry_run, retired=retired, grace_s=grace)
    if as_json:
        emit_json(res)
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(
            f"{verb} {len(res.deleted)} object(s), {human_size(res.bytes_freed)}"
            f" ({res.bytes_freed} bytes); kept {res.referenced} referenced, {res.kept_young} too young"
        )


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Quarantine corrupt objects, delete orphans and stale temporary files, mark builds with bad artifacts failed.",
)
@click.option(
    "--grace",
    type=float,
    default=3600,
    show_default=True,
    help="Objects/temp files younger than this are in-flight, not orphaned.",
)
@json_option
@pass_ctx
def fsck(ctx: Ctx, repair: bool, grace: float, as_json: bool) -> None:
    """Re-hash every store file and check every row's file; exit 8 when anything is wrong."""
    res = ctx.registry.maintenance.fsck(repair=repair, grace_s=grace)
    if as_json:
        if res.ok:
            emit_json(res)
    else:
        rows = []
        for k in res.PROBLEMS:
            found = getattr(res, k)
            rows.append(
                (
                    k,
                    len(found),
                    "; ".join(str(x.get("sha256") or x.get("path") or x.get("problem"))[:60] for x in found[:3]),
                )
            )
        table(f"fsck: {res.checked} store objects checked", ["problem", "count", "examples"], rows)
        for r in res.repaired:
            click.echo(f"repaired: {r}")
    if not res.ok:
        raise IntegrityError(
            "registry",
            f"fsck found {res.count()} problem(s)"
            + ("" if repair else "; run `loramgr fsck --repair` for what can be repaired"),
            details=res.to_json(),
        )  # with --json: the error object carries the report


@click.command("export-registry")
@click.option("-o", "--out", type=click.Path(readable=False, dir_okay=False), required=True, help="JSON file to write.")
@json_option
@pass_ctx
def export_registry(ctx: Ctx, out: str, as_json: bool) -> None:
    """Dump every registry row to JSON (backups; moving between SQLite and PostgreSQL)."""
    res = ctx.registry.maintenance.export_to(out)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"wrote {out}: {sum(res.rows.values())} rows (schema {res.schema})")


@click.command("import-registry")
@click.argument("path", type=click.Path(readable=False, dir_okay=False, exists=True))
@json_option
@pass_ctx
def import_registry(ctx: Ctx, path: str, as_json: bool) -> None:
    """Load an export-registry dump into an empty registry (the store files are shared or copied
    separately: rows refer to them by sha256)."""
    counts = ctx.registry.maintenance.import_from(path)
    if as_json:
        emit_json(counts)
    else:
        click.echo(f"imported {sum(counts.values())} rows from {path}")
