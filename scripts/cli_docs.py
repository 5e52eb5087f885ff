"""Generate docs/cli.md from the CLI's own ``--help`` texts.

python scripts/cli_docs.py          # rewrite docs/cli.md
python scripts/cli_docs.py --check  # exit 1 when docs/cli.md is stale (tests/test_house.py runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
HEADER = """# CLI reference

Generated from `loramgr --help` by `python scripts/cli_docs.py`; a test fails when it is stale.
Exit codes and the JSON error object are described in the README.

"""


def _walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> list[tuple[list[str], str]]:
    ctx = cmd.make_context(path[-1], [], parent=parent, resilient_parsing=True, terminal_width=100)
    out = [(path, cmd.get_help(ctx))]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _walk(sub, [*path, name], ctx)
    return out


def render() -> str:
    from loramgr.cli import cli

    parts = [HEADER]
    for path, text in _walk(cli, ["loramgr"], None):
        title = " ".join(path)
        parts.append(f"## {title}\n\n```text\n{text.rstrip()}\n```\n\n")
    return "".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is stale: run `python scripts/cli_docs.py`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
