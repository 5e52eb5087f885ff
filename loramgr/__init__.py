"""loramgr — LoRA adapter lifecycle manager for on-device LLM deployment.

The library does the work; :mod:`loramgr.cli` is a thin click layer over it. The public API, typed
(``py.typed``) and imported lazily so that ``import loramgr`` stays cheap for runtime code::

    from loramgr import Registry, register, validate, build, write_plan, Plan

    reg = Registry()                                   # $LORAMGR_HOME / $LORAMGR_DB_URL
    adapter, created = register(reg, "./my-peft-adapter", base="llama1b")
    report = validate(reg, [adapter.ref], "llama1b")   # validate.Report; .compatible, .adapters
    result = build(reg, "llama1b", share_adapters=True, out_dir="out/")
    written = write_plan(reg, "llama1b")               # out/plan.json
    plan = Plan.load(written.plan)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loramgr.version import __version__ as __version__

#: public name -> module that defines it
_EXPORTS = {
    "Registry": "loramgr.registry.api",
    "register": "loramgr.registry.api",
    "Settings": "loramgr.config",
    "validate": "loramgr.validation",
    "build": "loramgr.sections.pipeline",
    "write_plan": "loramgr.deploy.plan",
    "calibrate": "loramgr.calibration",
    "verify": "loramgr.verification",
    "write_bundle": "loramgr.deploy.bundle",
    "check_bundle": "loramgr.deploy.bundle",
    "Plan": "loramgr.runtime",
    "Adapter": "loramgr.records",
    "Base": "loramgr.records",
    "Graph": "loramgr.records",
    "AttachmentPoint": "loramgr.records",
    "Build": "loramgr.records",
    "Artifact": "loramgr.records",
    "EncodingSet": "loramgr.records",
    "Event": "loramgr.records",
    "LoramgrError": "loramgr.errors",
    "UsageError": "loramgr.errors",
    "NotFoundError": "loramgr.errors",
    "InvalidInputError": "loramgr.errors",
    "IncompatibleError": "loramgr.errors",
    "ConflictError": "loramgr.errors",
    "ExternalToolError": "loramgr.errors",
    "IntegrityError": "loramgr.errors",
    "StorageError": "loramgr.errors",
}

if TYPE_CHECKING:
    from loramgr.calibration import calibrate
    from loramgr.config import Settings
    from loramgr.deploy.bundle import check_bundle, write_bundle
    from loramgr.deploy.plan import write_plan
    from loramgr.errors import (
        ConflictError,
        ExternalToolError,
        IncompatibleError,
        IntegrityError,
        InvalidInputError,
        LoramgrError,
        NotFoundError,
        StorageError,
        UsageError,
    )
    from loramgr.records import Adapter, Artifact, AttachmentPoint, Base, Build, EncodingSet, Event, Graph
    from loramgr.registry.api import Registry, register
    from loramgr.runtime import Plan
    from loramgr.sections.pipeline import build
    from loramgr.validation import validate
    from loramgr.verification import verify


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loramgr' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, "__version__"])


__all__ = [
    "Adapter",
    "Artifact",
    "AttachmentPoint",
    "Base",
    "Build",
    "ConflictError",
    "EncodingSet",
    "Event",
    "ExternalToolError",
    "Graph",
    "IncompatibleError",
    "IntegrityError",
    "InvalidInputError",
    "LoramgrError",
    "NotFoundError",
    "Plan",
    "Registry",
    "Settings",
    "StorageError",
    "UsageError",
    "build",
    "calibrate",
    "check_bundle",
    "register",
    "validate",
    "verify",
    "write_bundle",
    "write_plan",
]
