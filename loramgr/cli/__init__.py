"""The ``loramgr`` command line: a thin click layer over the library.

Each command parses options, calls one library function and prints its result (a table, or JSON
with ``--json``). Library errors are translated here, in :func:`main`, and nowhere else: one line
``loramgr: error: <what>: <why>`` on stderr and the error class's exit code (DESIGN.md §5).
"""

from __future__ import annotations

import json
import sys

import click

from loramgr.cli.common import cli
from loramgr.errors import LoramgrError, translate

# Command modules register themselves on ``cli`` when imported.
from loramgr.cli import registry_cmds  # noqa: E402,F401
from loramgr.cli import validate_cmds  # noqa: E402,F401
from loramgr.cli import build_cmds  # noqa: E402,F401
from loramgr.cli import plan_cmds  # noqa: E402,F401
from loramgr.cli import export_cmds  # noqa: E402,F401
from loramgr.cli import runtime_cmds  # noqa: E402,F401
from loramgr.cli import encodings_cmds  # noqa: E402,F401
from loramgr.cli import lifecycle_cmds  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    want_json = "--json" in args
    try:
        cli.main(args=args, prog_name="loramgr", standalone_mode=False)
    except LoramgrError as e:
        if debug:
            import traceback

            traceback.print_exc()
        if want_json:
            click.echo(json.dumps(e.to_json(), indent=2))
        click.echo(f"loramgr: error: {e.message}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("loramgr: error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"loramgr: error: {e.format_message()}", err=True)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("loramgr: error: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place unexpected errors become exit 1
        known = translate(e)
        if known is not None:
            if want_json:
                click.echo(json.dumps(known.to_json(), indent=2))
            click.echo(f"loramgr: error: {known.message}", err=True)
            sys.exit(known.exit_code)
        if debug:
            raise
        click.echo(f"loramgr: error: unexpected {type(e).__name__}: {e} (rerun with --debug for details)",
                   err=True)
        sys.exit(1)
    sys.exit(0)
