"""The ``loramgr`` command line: a thin click layer over the library.

Each command parses options, calls one library function and prints its result (a table, or JSON
with ``--json``). Library errors are translated here, in :func:`main`, and nowhere else: one line
``loramgr: error: <what>: <why>`` on stderr and the error class's exit code (docs/conventions.md, "Errors").
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from loramgr.cli.common import cli, emit_json
from loramgr.errors import InternalError, Interrupted, LoramgrError, UsageError, translate


def _fail(err: LoramgrError, want_json: bool) -> None:
    """The one way a command fails: a JSON object on stdout with ``--json``, one line on stderr, the
    error class's exit code."""
    if want_json and not err.reported:
        emit_json(err.to_json())
    click.echo(f"loramgr: error: {err.message}", err=True)
    sys.exit(err.exit_code)


class _StderrNotices(logging.Handler):
    """Library notices (the ``loramgr`` logger: e.g. waiting for a lock) as ``loramgr: ...`` lines on
    whatever ``sys.stderr`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"loramgr: {record.getMessage()}", err=True)


def _log_to_stderr() -> None:
    log = logging.getLogger("loramgr")
    if not any(isinstance(h, _StderrNotices) for h in log.handlers):
        log.addHandler(_StderrNotices())
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a command and translate every failure in this one place, by type."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    want_json = "--json" in args
    _log_to_stderr()
    try:
        cli.main(args=args, prog_name="loramgr", standalone_mode=False)
    except LoramgrError as e:
        if debug:
            traceback.print_exc()
        _fail(e, want_json)
    except click.exceptions.Abort:
        _fail(Interrupted("aborted"), want_json)
    except click.ClickException as e:
        _fail(UsageError(e.format_message()), want_json)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _fail(Interrupted("interrupted"), want_json)
    except Exception as e:
        known = translate(e)
        if known is not None:
            _fail(known, want_json)
        if debug:
            raise
        _fail(InternalError(f"unexpected {type(e).__name__}", f"{e} (rerun with --debug for details)"), want_json)
    sys.exit(0)
