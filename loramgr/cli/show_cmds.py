"""``loramgr show``: one adapter or base.

A module of its own so that the command's process imports only the standard-library fast path
(:mod:`loramgr.registry.quickread`) and opens the full registry (SQLAlchemy) only when that path
cannot answer; see the ``cli_show`` row in docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

import click

from loramgr.cli.common import Ctx, emit_json, human_size, json_option, pass_ctx, table
from loramgr.records import Adapter, Base
from loramgr.registry.quickread import show_adapter


@click.command()
@click.argument("ref")
@json_option
@pass_ctx
def show(ctx: Ctx, ref: str, as_json: bool) -> None:
    """Show an adapter or base: NAME (newest version), NAME@VERSION or a sha256 prefix (>= 8 hex)."""
    rec = show_adapter(ctx.settings, ref) or ctx.registry.resolve(ref)
    if isinstance(rec, Adapter):
        doc = rec.to_json(full=True)
        if as_json:
            emit_json(doc | {"kind": "adapter"})
            return
        _fields(
            f"adapter {rec.ref}",
            doc,
            (
                "status",
                "sha256",
                "size",
                "rank",
                "lora_alpha",
                "dtype",
                "target_modules",
                "use_rslora",
                "use_dora",
                "fan_in_fan_out",
                "base_hint",
                "tags",
                "source_uri",
                "created_at",
            ),
        )
        table("tensors", ["key", "dtype", "shape"], [(t.key, t.dtype, list(t.shape)) for t in rec.tensor_list()])
        return
    assert isinstance(rec, Base)
    doc = rec.to_json(full=True)
    if as_json:
        emit_json(doc | {"kind": "base"})
        return
    _fields(
        f"base {rec.ref}",
        doc,
        ("status", "max_rank", "precision", "sdk_version", "alpha_tensor", "quant_updatable_mode", "created_at"),
    )
    table(
        "graphs",
        ["graph", "kind", "size", "sha256", "path"],
        [(g.name, g.kind, human_size(g.size), g.sha256[:12], g.path) for g in rec.graphs],
    )
    table(
        "attachment points",
        ["module", "in", "out", "rank", "dtype", "graphs"],
        [
            (a.module_path, a.in_features, a.out_features, a.rank, a.dtype, ",".join(a.graphs))
            for a in rec.attachment_points
        ],
    )


def _fields(title: str, doc: dict[str, Any], keys: tuple[str, ...]) -> None:
    """A record's chosen fields as a two-column table, in ``keys`` order."""
    table(title, ["field", "value"], [(k, doc[k]) for k in keys])
