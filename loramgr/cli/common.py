"""Shared CLI plumbing: the root group, one decorator per cross-cutting option, output helpers.

The root group names every command by the module that defines it (``_COMMANDS``) and imports that
module only when the command is run or listed. A command module therefore imports what it calls at
its top, and a process pays only for the command it runs: ``loramgr show`` imports neither
SQLAlchemy nor ONNX (the ``cli_show`` row in docs/benchmarks.md), ``loramgr run`` no registry.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loramgr.config import Settings
from loramgr.version import __version__

if TYPE_CHECKING:
    from loramgr.registry.api import Registry


class Ctx:
    """Per-invocation state; the registry is opened lazily so ``--help`` never touches a database."""

    def __init__(self, home: str | None, debug: bool, lock_timeout: float | None = None) -> None:
        self.settings = Settings.resolve(home, lock_timeout=lock_timeout)
        self.debug = debug
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """Opened on first use (SQLAlchemy is imported then, not for ``--help``)."""
        if self._registry is None:
            from loramgr.registry.api import Registry

            self._registry = Registry(self.settings)
            click.get_current_context().call_on_close(self._registry.close)
        return self._registry


#: command name -> "module:attribute" of its click command (modules under loramgr.cli)
_COMMANDS = {
    "init": "registry_cmds:init",
    "db": "registry_cmds:db_group",
    "register": "registry_cmds:register",
    "list": "registry_cmds:list_cmd",
    "show": "show_cmds:show",
    "validate": "validate_cmds:validate",
    "weight-list": "validate_cmds:weight_list",
    "build": "build_cmds:build",
    "calibrate": "encodings_cmds:calibrate",
    "encodings": "encodings_cmds:encodings_group",
    "plan": "plan_cmds:plan",
    "plan-show": "plan_cmds:plan_show",
    "bundle": "plan_cmds:bundle",
    "run": "runtime_cmds:run_cmd",
    "verify": "runtime_cmds:verify_cmd",
    "promote": "lifecycle_cmds:promote",
    "retire": "lifecycle_cmds:retire",
    "history": "lifecycle_cmds:history",
    "gc": "lifecycle_cmds:gc",
    "fsck": "lifecycle_cmds:fsck",
    "export-registry": "lifecycle_cmds:export_registry",
    "import-registry": "lifecycle_cmds:import_registry",
    "usecase": "usecase_cmds:usecase_group",
    "group": "usecase_cmds:group_group",
    "target": "target_cmds:target_group",
    "demo-model": "export_cmds:demo_model",
}
_BASE_COMMANDS = {"register": "registry_cmds:base_register", "export": "export_cmds:base_export"}


class LazyGroup(click.Group):
    """A group whose subcommands are imported from their modules when run or listed (click's
    "lazily loading subcommands" pattern)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name].partition(":")
        cmd = getattr(importlib.import_module(f"loramgr.cli.{module}"), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"loramgr.cli.{module}.{attr} is not a click command")
        return cmd


@click.group(
    cls=LazyGroup,
    lazy=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="loramgr")
@click.option(
    "--home",
    type=click.Path(readable=False, file_okay=False),
    envvar="LORAMGR_HOME",
    help="State directory (registry.db and store/); default ~/.loramgr or $LORAMGR_HOME.",
)
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.1, max=86400),
    envvar="LORAMGR_LOCK_TIMEOUT",
    help="Seconds a write waits for another process's registry write lock (default 60), then exit 6.",
)
@click.pass_context
def cli(ctx: click.Context, home: str | None, debug: bool, lock_timeout: float | None) -> None:
    """loramgr — manage LoRA adapters for on-device LLMs (QAIRT/QNN HTP, ONNX Runtime).

    Register adapters and LoRA-ready base graphs, validate compatibility, build binary sections
    (per-adapter, super adapters, default adapter), and emit the runtime plan.
    """
    ctx.obj = Ctx(home, debug, lock_timeout)


@cli.group("base", cls=LazyGroup, lazy=_BASE_COMMANDS)
def base_group() -> None:
    """Base models: LoRA-ready ONNX graphs and their attachment points."""


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def base_option(required: bool = True, help: str = "Base model (NAME[@VERSION]).") -> Callable[..., Any]:
    """``--base NAME[@VERSION]``, bound to the ``base_ref`` parameter (one definition for every command)."""
    return click.option("--base", "base_ref", required=required, help=help)


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: records render their own contract; anything else as a string."""
    to_json = getattr(obj, "to_json", None)
    return to_json() if callable(to_json) else str(obj)


def _finite(obj: Any) -> Any:
    """Strict JSON has no NaN or Infinity: such numbers become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Print a record (or a list/dict of them) as strict JSON."""
    plain = json.loads(json.dumps(obj, default=_jsonable))
    click.echo(json.dumps(_finite(plain), indent=2, sort_keys=False, allow_nan=False))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A readable table on a terminal, plain aligned text otherwise (rich handles both)."""
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        # cells are data, never markup: "[in 896, out 896]" must print as it is
        t.add_row(*[Text("" if v is None else str(v)) for v in r])
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def parse_kv(values: Sequence[str], what: str) -> dict[str, str]:
    """Repeated ``K=V`` options; a key given twice is a usage error (not a silent overwrite)."""
    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} is not K=V", param_hint=what)
        k, val = v.split("=", 1)
        if k.strip() in out:
            raise click.BadParameter(f"{k.strip()!r} is given twice", param_hint=what)
        out[k.strip()] = val
    return out
