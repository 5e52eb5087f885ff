"""What a well-formed plan is, checked at load: the JSON Schema's rules on names, references and
numbers, without jsonschema (the runtime imports only the standard library)."""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Iterator
from typing import Any

from loramgr import dtypes
from loramgr.kinds import OwnerType, SectionKind
from loramgr.runtime.errors import PlanFormatError


@contextlib.contextmanager
def malformed(where: str) -> Iterator[None]:
    """A plan entry of the wrong shape is a plan format error (exit 4), wherever it is first read:
    entries are read lazily, so this guards the lazy readers as well as ``Plan.load``."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PlanFormatError(where, f"malformed plan ({type(e).__name__}: {e})") from None


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,255}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_structure(doc: dict[str, Any], where: str) -> None:
    """What the JSON Schema says about names and cross-references, checked without jsonschema (the
    runtime is stdlib only): a hand-edited plan fails here, naming the entry, instead of deep inside."""

    def bad(why: str) -> PlanFormatError:
        return PlanFormatError(where, why)

    for key in ("alpha", "rules", "reset_steps"):
        if not isinstance(doc.get(key, {}), dict):
            raise bad(f"{key} must be an object")
    graphs = doc["base"]["graphs"]
    if not isinstance(graphs, list) or not graphs:
        raise bad("the plan lists no graphs")
    names = [g["name"] for g in graphs]
    for n in names:
        if not isinstance(n, str) or not _SAFE_NAME.match(n) or ".." in n:
            raise bad(f"graph name {str(n)[:80]!r} is not a safe name")
    graph_set = set(names)
    if len(graph_set) != len(names):
        raise bad("the plan lists a graph name twice")
    if not isinstance(doc["adapters"], list) or not isinstance(doc["default_adapter"], dict):
        raise bad("adapters must be a list and default_adapter an object")
    use_cases = doc.get("use_cases", [])
    if not isinstance(use_cases, list):
        raise bad("use_cases must be a list")
    slots = doc.get("alpha", {}).get("slots")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or not 0 < slots <= 1024):
        raise bad("alpha.slots must be a count of alpha slots")
    # an alpha must stay finite in the graph's alpha input, not only as a Python float
    held = dtypes.alpha_dtype(str(doc["base"].get("precision")))
    for key in ("default", "reset_value"):
        if key in doc.get("alpha", {}) and not _alpha_ok(doc["alpha"][key], held):
            raise bad(f"alpha.{key} must be a finite {held}")
    for u in use_cases:
        members = u["adapters"]
        alphas = u.get("alphas", [1.0] * len(members))
        if (
            not isinstance(members, list)
            or not members
            or not all(
                isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("slot"), int)
                for m in members
            )
        ):
            raise bad(f"use case {str(u.get('name'))[:80]!r}: adapters must be [{{name, slot}}, ...]")
        if sorted(m["slot"] for m in members) != list(range(len(members))) or (slots and len(members) > slots):
            raise bad(f"use case {str(u.get('name'))[:80]!r}: slots must be 0..n-1 within the alpha slots")
        if not isinstance(alphas, list) or len(alphas) != len(members) or not all(_alpha_ok(x, held) for x in alphas):
            raise bad(f"use case {str(u.get('name'))[:80]!r}: alphas must be one finite {held} per adapter")
    refs: set[str] = set()
    owners = [(a, OwnerType.ADAPTER) for a in doc["adapters"]] + [(u, OwnerType.USE_CASE) for u in use_cases]
    for a, owner_type in [*owners, (doc["default_adapter"], OwnerType.DEFAULT)]:
        name, ref = a.get("name", "default"), a.get("ref", "default")
        for v in (name, ref):
            if not isinstance(v, str) or not _SAFE_NAME.match(v) or ".." in v:
                raise bad(f"adapter name {str(v)[:80]!r} is not a safe name")
        if ref in refs or ref in ("default", "default_adapter") and a is not doc["default_adapter"]:
            raise bad(f"adapter {ref!r} is listed twice (or shadows the default adapter)")
        refs.add(ref)
        if not isinstance(a["sections"], list):
            raise bad(f"adapter {ref!r}: sections must be a list")
        steps = a.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("op"), str) for s in steps):
            raise bad(f"adapter {ref!r}: steps must be a list of {{op: ...}} objects")
        for st in steps:
            if st["op"] == "set_alpha":
                v = st.get("values", st.get("value"))
                if not all(_alpha_ok(x, held) for x in (v if isinstance(v, list) else [v])):
                    raise bad(f"adapter {ref!r}: a set_alpha step's values must be finite {held} numbers")
        for key in ("io_encodings", "weight_encodings"):
            if not isinstance(a.get(key) or {}, dict):
                raise bad(f"adapter {ref!r}: {key} must be an object")
        ra = a.get("recommended_alpha", 1.0)
        if not _alpha_ok(ra, held):
            raise bad(f"adapter {ref!r}: recommended_alpha must be a finite {held}")
        for s in a["sections"]:
            unknown = [g for g in s["graphs"] if g not in graph_set]
            if unknown or not s["graphs"]:
                raise bad(f"adapter {ref!r}: a section names unknown graph(s) {unknown or '(none)'}")
            if not isinstance(s["sha256"], str) or not _HEX64.match(s["sha256"]):
                raise bad(f"adapter {ref!r}: a section's sha256 is not a hex digest")
            if isinstance(s["size"], bool) or not isinstance(s["size"], int) or s["size"] < 0:
                raise bad(f"adapter {ref!r}: a section's size is not a byte count")
            _check_owner(s, owner_type, name, bad, f"adapter {ref!r}")
    _check_names(doc, use_cases, bad)
    for g in doc.get("groups") or []:
        for s in g["sections"]:
            _check_owner(s, OwnerType.GROUP, g["name"], bad, f"group {str(g['name'])[:80]!r}")


def _check_names(doc: dict[str, Any], use_cases: list[Any], bad: Any) -> None:
    """What the C reader checks too: a use case's name is its own (not another use case's), every slot
    names an adapter of the plan (a ref, or a name one version holds), a group is listed once."""
    counts = collections.Counter(a.get("name") for a in doc["adapters"])
    adapters = {a.get("ref") for a in doc["adapters"]} | {n for n, c in counts.items() if c == 1}
    seen: set[str] = set()
    for u in use_cases:
        if u.get("name") in seen:
            raise bad(f"use case {str(u.get('name'))[:80]!r} is listed twice")
        seen.add(u.get("name"))
        unknown = [m["name"] for m in u["adapters"] if m["name"] not in adapters]
        if unknown:
            raise bad(f"use case {str(u.get('name'))[:80]!r}: slot adapter {str(unknown[0])[:80]!r} is not in the plan")
    groups = [g.get("name") for g in doc.get("groups") or [] if isinstance(g, dict)]
    if len(set(groups)) != len(groups):
        raise bad("the plan lists a group twice")


def _alpha_ok(x: Any, held: str) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and dtypes.fits(x, held)


def _check_owner(s: dict[str, Any], owner_type: OwnerType, name: str, bad: Any, where: str) -> None:
    """A section's ``kind`` and ``owner`` (plans written since they were added) must be those of the
    entry that lists it: a runtime that switches by owner must never apply another owner's file."""
    if "kind" in s and SectionKind(s["kind"]) not in _KINDS[owner_type]:
        raise bad(f"{where}: a section of kind {s['kind']!r} is listed under a {owner_type.value}")
    o = s.get("owner")
    if o is None:
        return
    if not isinstance(o, dict) or OwnerType(o.get("type")) is not owner_type:
        raise bad(f"{where}: a section is owned by {str(o)[:80]}, not by this {owner_type.value}")
    if owner_type is not OwnerType.DEFAULT and o.get("name") != name:
        raise bad(f"{where}: a section is owned by {str(o.get('name'))[:80]!r}")


_KINDS = {
    OwnerType.ADAPTER: (SectionKind.ADAPTER, SectionKind.ADAPTER_SUPER),
    OwnerType.USE_CASE: (SectionKind.USE_CASE, SectionKind.USE_CASE_SUPER),
    OwnerType.GROUP: (SectionKind.GROUP_QUANT,),
    OwnerType.DEFAULT: (SectionKind.DEFAULT,),
}
