"""Progress for long work: a rich bar on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, label: str, quiet: bool = False) -> None:
        self.quiet, self.total, self.done, self.label = quiet, total, 0, label
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            self.bar = RichProgress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=what)
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
