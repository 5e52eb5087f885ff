"""loramgr — LoRA adapter lifecycle manager for on-device LLM deployment.

The library does the work; :mod:`loramgr.cli` is a thin click layer over it.
"""

__version__ = "0.1.0"
