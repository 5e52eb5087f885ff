"""What ``base export`` does when the model, not loramgr, cannot go on: a failure inside torch's
exporter or transformers is the model's structure (exit 2, one line naming the model type and the
innermost reason), never exit 1; and a failed export leaves no output directory it made."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loramgr.errors import InvalidInputError, UsageError


@contextlib.contextmanager
def fresh_dir(out: Path) -> Iterator[None]:
    """Make ``out``; when the export fails, remove it again if it did not exist before (an existing
    directory is the user's: only its files are overwritten, as a finished export would)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def why_not(e: BaseException) -> str:
    """One line for an exporter failure: the innermost cause's first line (torch.onnx wraps the real
    reason, e.g. "No ONNX function found for aten.x", in several layers of advice)."""
    inner: BaseException = e
    seen = {id(inner)}
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    text = str(inner)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(inner).__name__)
    return line[:300]


def guarded(cfg: Any, step: Callable[[], Any]) -> Any:
    """``step()`` (a probe or a trace of the model); a failure inside torch or transformers is the
    model's structure, not a loramgr bug: exit 2 naming the model type and the innermost reason."""
    try:
        return step()
    except (UsageError, InvalidInputError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - torch.export / onnxscript / transformers raise assorted types
        raise UsageError(
            f"model_type {getattr(cfg, 'model_type', None)!r}", f"cannot be exported: {why_not(e)}"
        ) from None
