"""The backend named by ``build --backend``.

Kept out of the package's ``__init__`` (the contract every backend imports) so that no backend
module imports its own package's chooser back.
"""

from __future__ import annotations

from typing import Any

from loramgr.errors import UsageError
from loramgr.sections.backends import Backend
from loramgr.sections.backends.ort import OrtBackend
from loramgr.sections.backends.qairt import QairtBackend
from loramgr.sections.backends.qnn_ep import QnnEpBackend


def get_backend(name: str, **opts: Any) -> Backend:
    """A new backend of ``name`` (``ort``, ``qairt`` or ``qnn-ep``) with its options."""
    if name == "ort":
        return OrtBackend()
    if name == "qairt":
        return QairtBackend(**opts)
    if name == "qnn-ep":
        return QnnEpBackend(**opts)
    raise UsageError(f"--backend {name}", "must be ort, qairt or qnn-ep")
