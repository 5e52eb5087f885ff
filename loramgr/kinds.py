"""What a section is and whose: the two vocabularies the build, the plan and both runtimes share.

Stdlib only, so that the plan runtime (:mod:`loramgr.runtime`, importable without numpy or
SQLAlchemy) reads a plan's ``kind`` and ``owner`` with the same members the build writes them from.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["OwnerType", "SectionKind"]


class OwnerType(str, Enum):
    """Whose a section is: the four cases a runtime switches between."""

    ADAPTER = "adapter"
    USE_CASE = "use_case"
    GROUP = "group"  # a group's quantization-only section (QNN LoRA v3 grouped mode)
    DEFAULT = "default"  # the all-zero default adapter


class SectionKind(str, Enum):
    """What a section file is. The values are the build's ``kind`` strings (registry rows, ``build
    --json``, the plan), so they stay as they were; code compares members, never strings."""

    ADAPTER = "section"
    ADAPTER_SUPER = "super_section"  # one section for a group of graphs (share_adapters_between_graphs)
    DEFAULT = "default_section"
    USE_CASE = "use_case_section"
    USE_CASE_SUPER = "use_case_super_section"
    GROUP_QUANT = "group_quant_section"

    @classmethod
    def of(cls, owner: OwnerType, shared: bool) -> SectionKind:
        """The kind of an owner's section, shared by several graphs (a super section) or not."""
        if owner is OwnerType.ADAPTER:
            return cls.ADAPTER_SUPER if shared else cls.ADAPTER
        if owner is OwnerType.USE_CASE:
            return cls.USE_CASE_SUPER if shared else cls.USE_CASE
        return cls.GROUP_QUANT if owner is OwnerType.GROUP else cls.DEFAULT

    @property
    def shared(self) -> bool:
        return self in (SectionKind.ADAPTER_SUPER, SectionKind.USE_CASE_SUPER)
