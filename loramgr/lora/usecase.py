"""Use cases: several adapters active at once on a base with alpha slots (QNN LoRA v3 structure).

At every attachment point the adapters' rank columns are concatenated in slot order, zero-padded to the
base's rank R: ``A = [A_1 | A_2 | 0]`` (``[in, R]``), ``B = [B_1; B_2; 0]`` (``[R, out]``, each adapter's
PEFT scaling folded in as for one adapter), and the slot map ``indices = [0]*r_1 + [1]*r_2 + [N]*pad``
sends each column to its adapter's alpha slot (N: the extra slot fixed at 0). The graph computes
``((x @ A) * alpha[indices]) @ B``, i.e. ``sum_i alpha_i * (x @ A_i) @ B_i``: PEFT with every adapter
active and ``scaling_i`` times ``alpha_i``. Pure functions over records and tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from loramgr import dtypes
from loramgr.lora.rules import Check, Problem, check_adapter, group_rule
from loramgr.records import Adapter, Base


def module_ranks(adapter: Adapter, check: Check) -> dict[str, int]:
    """Attachment point -> the adapter's rank there (the rows of its lora_A)."""
    shapes = {t.key: t.shape for t in adapter.tensor_list()}
    return {module: int(shapes[a_key][0]) for module, (a_key, _) in check.pairs.items()}


def check_use_case(
    base: Base,
    adapters: Sequence[Adapter],
    alphas: Sequence[float],
    load: Callable[[Adapter], Callable[[str], np.ndarray]] | None = None,
) -> tuple[list[Problem], dict[str, Check]]:
    """Every problem of a use case at once: the base's slots, each adapter's own problems, ranks that
    add up past an attachment point's R (naming the point and the ranks), mixed precision classes."""
    refs = [a.ref for a in adapters]
    problems = slot_problems(base, refs)
    dupes = sorted({r for r in refs if refs.count(r) > 1})
    if dupes:
        problems.append(Problem("duplicate_adapter", f"{dupes[0]} is listed twice", dupes[0]))
    held = dtypes.alpha_dtype(base.precision)
    if len(alphas) != len(adapters) or not all(dtypes.fits(a, held) for a in alphas):
        limit = f"finite, |a| <= {dtypes.FLOAT_MAX[held]:g}, the base's {held} alpha input"
        problems.append(
            Problem("bad_alpha", f"{len(alphas)} alphas for {len(adapters)} adapters ({limit})", ", ".join(refs))
        )
    checks: dict[str, Check] = {}
    for a in adapters:
        c = check_adapter(a, base, load(a) if load else None)
        checks[a.ref] = c
        problems += [Problem(p.code, f"{a.ref}: {p.message}", p.subject, p.hint) for p in c.problems]
    if len(adapters) > 1:
        problems += group_rule({a.ref: a for a in adapters}, checks, base).problems
    problems += summed_rank_problems(
        base, {a.ref: module_ranks(a, checks[a.ref]) for a in adapters if checks[a.ref].ok}
    )
    return problems, checks


def slot_problems(base: Base, refs: Sequence[str]) -> list[Problem]:
    """The base's alpha slots against a use case's adapters: none at all, or fewer than adapters."""
    n = base.max_adapters
    if not n:
        return [
            Problem(
                "no_alpha_slots",
                f"base {base.ref} has one scalar alpha",
                base.ref,
                "export the base with --max-adapters N (N >= the adapters of a use case)",
            )
        ]
    if len(refs) > n:
        return [
            Problem(
                "too_many_adapters",
                f"{len(refs)} adapters but base {base.ref} has {n} alpha slots",
                ", ".join(refs),
                f"at most {n} adapters, or export with --max-adapters {len(refs)}",
            )
        ]
    return []


def summed_rank_problems(base: Base, ranks: Mapping[str, Mapping[str, int]]) -> list[Problem]:
    """Every attachment point where the adapters' ranks (adapter ref -> point -> rank) add up past
    its rank R, naming the point and the ranks."""
    problems = []
    for ap in base.attachment_points:
        here = {ref: r[ap.module_path] for ref, r in ranks.items() if ap.module_path in r}
        if sum(here.values()) > ap.rank:
            parts = " + ".join(f"{r} ({ref})" for ref, r in here.items())
            problems.append(
                Problem(
                    "summed_rank_exceeds",
                    f"at {ap.module_path} the ranks add up to "
                    f"{sum(here.values())} = {parts}, more than its rank {ap.rank}",
                    ap.module_path,
                    f"fewer or smaller adapters, or export the base with --max-rank {sum(here.values())}",
                )
            )
    return problems


def concat_inputs(
    base: Base,
    prepared: Sequence[Mapping[str, np.ndarray]],
    ranks: Sequence[Mapping[str, int]],
) -> dict[str, np.ndarray]:
    """A use case's section inputs from its adapters' prepared (scaled, padded) inputs, slot i = i-th.
    Each adapter's first ``r_i`` columns of A (rows of B) are its real ones; the rest is padding."""
    n = base.max_adapters or 0
    out: dict[str, np.ndarray] = {}
    for ap in base.attachment_points:
        a = np.zeros_like(prepared[0][ap.tensor_a]) if prepared else None
        b = np.zeros_like(prepared[0][ap.tensor_b]) if prepared else None
        idx = np.full((1, ap.rank), n, np.int64)
        col = 0
        for slot, (p, r) in enumerate(zip(prepared, ranks, strict=True)):
            k = r.get(ap.module_path, 0)
            if k:
                assert a is not None and b is not None
                a[:, col : col + k] = p[ap.tensor_a][:, :k]
                b[col : col + k, :] = p[ap.tensor_b][:k, :]
                idx[0, col : col + k] = slot
                col += k
        if a is not None and b is not None:
            out[ap.tensor_a], out[ap.tensor_b] = a, b
        if ap.tensor_indices:
            out[ap.tensor_indices] = idx
    return out


def single_indices(base: Base, ranks: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The slot map of one adapter alone on a base with alpha slots: its columns -> slot 0."""
    n = base.max_adapters or 0
    out = {}
    for ap in base.attachment_points:
        if ap.tensor_indices:
            idx = np.full((1, ap.rank), n, np.int64)
            idx[0, : ranks.get(ap.module_path, 0)] = 0
            out[ap.tensor_indices] = idx
    return out
