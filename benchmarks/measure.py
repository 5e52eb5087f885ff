"""How every benchmark figure is measured and recorded.

Method (issue #21): a subject and its baseline do the same work and are timed as A/B pairs
interleaved (a, b, a, b, ...) after a warm-up of each, so both see the same cache state and the same
machine noise; each figure is the median of the trials, with min and max, and the ratio's spread is
taken over the paired trials. A row is either a ``goal`` row (a ratio, or an absolute figure, with a
goal; it carries ``pass``) or a ``report`` row (a figure shown for context; it carries no ``pass``).
Every row has a stable ``id`` that tests and docs/benchmarks.md refer to.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trials:
    """Paired wall times (seconds) of a baseline and a subject."""

    baseline: list[float] = field(default_factory=list)
    subject: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [s / b for b, s in zip(self.baseline, self.subject, strict=True) if b > 0]


def interleave(
    baseline: Callable[[], Any],
    subject: Callable[[], Any],
    rounds: int,
    warmup: int = 1,
    inner: int = 1,
    timer: Callable[[Callable[[], Any]], float] | None = None,
    pause: float = 0.0,
) -> Trials:
    """``rounds`` A/B pairs, alternating which side goes first (a, b, b, a, ...) so neither always
    runs on a cache the other just warmed. ``inner`` repeats a short operation inside one trial (the
    trial is the mean); ``timer`` lets a side time itself (e.g. excluding its own cleanup); ``pause``
    seconds of sleep before each trial, untimed (two ONNX Runtime sessions: the thread pool of the one
    that just ran spins for a while, taking a core from the other)."""

    def once(fn: Callable[[], Any]) -> float:
        if pause:
            time.sleep(pause)
        return timer(fn) if timer is not None else timed(fn, inner)

    for _ in range(warmup):
        once(baseline)
        once(subject)
    out = Trials()
    for i in range(rounds):
        if i % 2:
            s, b = once(subject), once(baseline)
        else:
            b, s = once(baseline), once(subject)
        out.baseline.append(b)
        out.subject.append(s)
    return out


def timed(fn: Callable[[], Any], inner: int = 1) -> float:
    """Mean wall time of ``inner`` calls of ``fn``. What the last call returns is released after the
    clock stops: a side's cleanup (freeing a copy, tearing a session down: ~20 ms of a ~0.4 s new
    ONNX Runtime session here) is not its work."""
    out = None
    t = time.perf_counter()
    for _ in range(inner):
        out = fn()
    dt = time.perf_counter() - t
    del out
    return dt / inner


def self_timed(fn: Callable[[], Any]) -> float:
    """For sides that return their own timed span (work only, cleanup excluded)."""
    return float(fn())


@dataclass
class Row:
    """One benchmark figure. ``goal`` is a ratio bound (subject / baseline <= goal) unless
    ``absolute``: then it bounds the subject's own value. ``higher_is_better`` flips the bound."""

    id: str
    name: str
    baseline: str
    baseline_values: list[float]
    subject_values: list[float]
    unit: str
    goal: float | None = None  # None: a report row
    absolute: bool = False
    higher_is_better: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def timed(cls, id: str, name: str, baseline: str, t: Trials, **kw: Any) -> Row:
        """A row from interleaved trials, with the spread of the paired ratios."""
        row = cls(id, name, baseline, t.baseline, t.subject, "s", **kw)
        if r := t.ratios:
            row.extra |= {"ratio_min": min(r), "ratio_max": max(r), "ratio_median": statistics.median(r)}
        return row

    @property
    def kind(self) -> str:
        return "report" if self.goal is None else "goal"

    @property
    def baseline_value(self) -> float:
        return statistics.median(self.baseline_values)

    @property
    def value(self) -> float:
        return statistics.median(self.subject_values)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("inf")

    @property
    def passed(self) -> bool | None:
        if self.goal is None:
            return None
        v = self.value if self.absolute else self.ratio
        return v >= self.goal if self.higher_is_better else v <= self.goal

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "report"
        op = ">=" if self.higher_is_better else "<="
        return f"{op} {self.goal:g}" + ("" if self.absolute else "x")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "goal": self.goal,
            "goal_on": "value" if self.absolute else "ratio",
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "baseline_min": min(self.baseline_values),
            "baseline_max": max(self.baseline_values),
            "value": self.value,
            "loramgr_value": self.value,
            "loramgr_min": min(self.subject_values),
            "loramgr_max": max(self.subject_values),
            "ratio": self.ratio,
            "trials": len(self.subject_values),
            "note": self.note,
            **self.extra,
        }
        if self.kind == "goal":
            out["goal_op"] = ">=" if self.higher_is_better else "<="  # which side of the goal passes
            out["pass"] = self.passed
        return out


def fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "bytes":
        return f"{v / 2**20:.1f} MiB" if v >= 2**20 else f"{v / 1024:.0f} KiB"
    return f"{v:.3g}"


def table(rows: list[Row]) -> str:
    """The Markdown table docs/benchmarks.md shows (ratio with its spread over paired trials)."""
    head = ["id", "benchmark", "baseline", "baseline", "loramgr", "ratio (min-max)", "goal", "pass"]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        spread = f" ({r.extra['ratio_min']:.3g}-{r.extra['ratio_max']:.3g})" if "ratio_min" in r.extra else ""
        lines.append(
            [
                f"`{r.id}`",
                r.name,
                r.baseline,
                fmt(r.baseline_value, r.unit),
                fmt(r.value, r.unit),
                f"{r.ratio:.3g}x{spread}",
                r.goal_text,
                "-" if r.passed is None else ("yes" if r.passed else "**no**"),
            ]
        )
    text = "\n".join("| " + " | ".join(ln) + " |" for ln in lines)
    notes = [f"- `{r.id}`: {r.note}" for r in rows if r.note]
    return text + ("\n\n" + "\n".join(notes) if notes else "")
