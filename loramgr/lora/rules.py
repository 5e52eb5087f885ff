"""Compatibility rules: can this adapter serve this base (QNN LoRA v2: same architecture and
attachment points, rank within the max rank, same precision), and can several adapters of one base
live together? Every problem is reported at once, each with a stable code, the tensor/module
concerned and a fix hint.

Pure functions over records (records and a tensor loader in, problems out), so that the layers below
the workflow (use cases, section inputs, the registry's use-case checks) call them without reaching up
to :mod:`loramgr.validation`, which wires them to the registry and records the outcome.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loramgr import dtypes
from loramgr.formats.peft import LoraConfig
from loramgr.formats.safetensors import TensorInfo
from loramgr.lora.mapping import AttachmentIndex, parse_key, target_matches
from loramgr.lora.prepare import canonical_pair, fp16_overflow
from loramgr.records import Adapter, Base, JsonRecord

#: code -> one-line description. The codes are a stable contract for scripts, and this table is their
#: source: a problem with a code not listed here is a bug (``Check`` refuses it); docs/validate.md lists them.
CODES = {
    "rank_exceeds_max": "adapter rank is above the base's max rank",
    "target_missing": "the adapter targets a module the base has no attachment point for",
    "shape_mismatch": "in/out features differ from the base's attachment point",
    "rank_pair_mismatch": "lora_A and lora_B ranks differ",
    "missing_partner": "an A without its B (or a B without its A)",
    "precision_loss": "values cannot be represented in the base's precision",
    "unsupported_dtype": "tensor dtype is not a floating-point type",
    "dora": "DoRA magnitude vectors cannot be applied by a LoRA-v2 base",
    "modules_to_save": "full weights (modules_to_save) cannot be applied as a LoRA delta",
    "lora_bias": "LoRA bias terms cannot be applied as a LoRA delta",
    "layer_replication": "the adapter was trained on a model whose layers PEFT replicated (layer_replication)",
    "alpha_unknown": "lora_alpha is unknown (no adapter_config.json and no --lora-alpha)",
    "unmatched_tensor": "a tensor that is not part of any LoRA pair",
    "retired": "the adapter or base is retired",
    "no_lora_tensors": "the file holds no LoRA A/B pairs",
    # group rules (several adapters of one base)
    "precision_class": "adapters of one base mix precision classes (float vs integer)",
    "attachment_set": "an adapter attaches outside the base's attachment points",
    # use cases (several adapters active at once)
    "no_alpha_slots": "the base has one scalar alpha (exported without --max-adapters): no use cases",
    "too_many_adapters": "a use case holds more adapters than the base has alpha slots",
    "summed_rank_exceeds": "at an attachment point the use case's ranks add up to more than the base's rank",
    "duplicate_adapter": "a use case lists an adapter twice",
    "bad_alpha": "a use case's default alphas are not one finite number per adapter",
    # the QNN LoRA v3 flow (build --backend qairt --lora-version 3)
    "encodings_need_updatable_mode": "a use case has its own encodings but the mode shares one set (none)",
    "encodings_missing": "mode all on an integer base needs every use case's own encodings",
    # warnings
    "rank_padded": "rank zero-padded up to the base's max rank",
    "zero_filled": "base attachment points the adapter does not target are zero-filled",
    "prefix_mapped": "module paths matched the base modulo the wrapper prefix",
}


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    subject: str = ""
    hint: str = ""
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"problem code {self.code!r} is not in validate.CODES")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Check:
    """Outcome for one adapter against one base."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # base module -> (A key, B key)
    rank: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def error(self, code: str, message: str, subject: str = "", hint: str = "") -> None:
        self.problems.append(Problem(code, message, subject, hint))

    def warn(self, code: str, message: str, subject: str = "", hint: str = "") -> None:
        self.warnings.append(Problem(code, message, subject, hint, "warning"))


def _first(items: Iterable[str], n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" … (+{len(items) - n})" if len(items) > n else "")


#: checks already made in this process, by what they depend on (a build validates its adapters, then
#: prepares their inputs: one check each, not two); bounded, oldest out first
_MEMO: OrderedDict[tuple[Any, ...], Check] = OrderedDict()
_MEMO_SIZE = 4096


def check_adapter(
    adapter: Adapter,
    base: Base,
    load: Callable[[str], np.ndarray] | None = None,
    index: AttachmentIndex | None = None,
) -> Check:
    """All compatibility problems of one adapter against one base.

    ``adapter`` is a full record (tensor list and PEFT config). ``load`` reads a tensor's values; it
    is used only when the precision check needs values (a wider dtype than the base's precision).
    ``index``: the base's attachment index, when checking many adapters against one base. The result
    is the same object for the same adapter content and base graphs within a process: read only.
    """
    key = (
        adapter.ref, adapter.sha256, adapter.config_sha256, adapter.lora_alpha, adapter.status,
        base.ref, base.fingerprint, base.precision, base.status, load is not None,
    )  # fmt: skip
    if base.fingerprint is not None and key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    c = _check_adapter(adapter, base, load, index)
    if base.fingerprint is not None:
        _MEMO[key] = c
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return c


def _check_adapter(
    adapter: Adapter, base: Base, load: Callable[[str], np.ndarray] | None, index: AttachmentIndex | None
) -> Check:
    c = Check()
    cfg = adapter.peft_config or LoraConfig()
    aps = {ap.module_path: ap for ap in base.attachment_points}
    index = index or AttachmentIndex(aps)
    max_rank = int(base.max_rank)
    ref = adapter.ref

    if adapter.status == "retired":
        c.error("retired", f"adapter {ref} is retired", ref, "register a new version or pick another adapter")
    if base.status == "retired":
        c.error("retired", f"base {base.ref} is retired", base.ref, "use an active base")
    if adapter.lora_alpha is None:
        c.error(
            "alpha_unknown",
            f"{ref} has no lora_alpha (no adapter_config.json)",
            ref,
            "register it again with --lora-alpha A, or from its PEFT directory",
        )
    if cfg.use_dora:
        c.error(
            "dora",
            "use_dora is true: DoRA rescales the base weight, which a LoRA-v2 base cannot do",
            ref,
            "merge the DoRA adapter offline, or retrain as plain LoRA",
        )
    if cfg.modules_to_save:
        c.error(
            "modules_to_save",
            f"modules_to_save {cfg.modules_to_save} ships full weights",
            ref,
            "bake those modules into the base, or retrain without modules_to_save",
        )
    if cfg.bias not in (None, "none"):
        c.error("lora_bias", f"bias={cfg.bias!r} trains bias terms", ref, "retrain with bias='none'")
    replication = cfg.extra.get("layer_replication")
    if replication:
        c.error(
            "layer_replication",
            f"layer_replication {str(replication)[:80]} stacks copies of the base's layers, which the base"
            " graph does not have",
            ref,
            "export a base from the model with its layers replicated as PEFT builds it, or retrain without it",
        )

    by_module: dict[str, dict[str, TensorInfo]] = {}
    for t in adapter.tensor_list():
        ki = parse_key(t.key)
        if ki.role in ("A", "B"):
            by_module.setdefault(ki.module, {})[ki.role] = t
        elif ki.role == "dora_magnitude":
            c.error("dora", "DoRA magnitude vector present", t.key, "merge DoRA offline or retrain as plain LoRA")
        elif ki.role == "full_weight":
            c.error(
                "modules_to_save",
                "full weight tensor, not a LoRA delta",
                t.key,
                "bake it into the base, or drop it from the adapter",
            )
        elif ki.role == "lora_bias":
            c.error("lora_bias", "bias tensor cannot be applied as a LoRA delta", t.key, "retrain with bias='none'")
        elif ki.role == "alpha":
            continue
        else:
            c.error(
                "unmatched_tensor",
                "tensor matches no LoRA naming (lora_A/lora_B/lora_embedding_A/B)",
                t.key,
                "rename it to PEFT's naming or remove it",
            )
    if not by_module and not c.problems:
        c.error("no_lora_tensors", "no LoRA A/B tensors found", ref, "is this a LoRA adapter?")

    missing_targets: dict[str, list[str]] = {}
    over: dict[str, int] = {}
    prefix_mapped = 0
    precision = base.precision
    for module, roles in sorted(by_module.items()):
        if set(roles) != {"A", "B"}:
            have, lack = ("A", "B") if "A" in roles else ("B", "A")
            c.error(
                "missing_partner",
                f"lora_{have} without lora_{lack}",
                roles[have].key,
                "the adapter file is incomplete; re-export it",
            )
            continue
        ta, tb = roles["A"], roles["B"]
        sa, sb = ta.shape, tb.shape
        if len(sa) != 2 or len(sb) != 2:
            c.error("shape_mismatch", f"LoRA tensors must be 2-D, got {list(sa)} and {list(sb)}", module)
            continue
        r, in_f = sa
        out_f, r_b = sb
        c.rank = max(c.rank, r)
        if r != r_b:
            c.error("rank_pair_mismatch", f"lora_A has rank {r} but lora_B has rank {r_b}", module)
        if r > max_rank:
            over[module] = r
        ap_path = index.find(module)
        if ap_path is None:
            missing_targets.setdefault(module.rsplit(".", 1)[-1], []).append(module)
            continue
        if ap_path != module:
            prefix_mapped += 1
        ap = aps[ap_path]
        if (in_f, out_f) != (ap.in_features, ap.out_features):
            hint = "is this adapter for another model size?"
            if cfg.fan_in_fan_out and (in_f, out_f) == (ap.out_features, ap.in_features):
                hint = "the adapter's lora tensors look transposed; PEFT keeps [r, in]/[out, r] even for Conv1D"
            c.error(
                "shape_mismatch",
                f"adapter is [in {in_f}, out {out_f}] but the base attachment point is "
                f"[in {ap.in_features}, out {ap.out_features}]",
                module,
                hint,
            )
            continue
        for t in (ta, tb):
            if dtypes.from_safetensors(t.dtype) not in dtypes.LORA_FLOATS:
                c.error(
                    "unsupported_dtype",
                    f"dtype {t.dtype} is not floating point",
                    t.key,
                    "dequantize the adapter to fp16/fp32 first",
                )
        c.pairs[ap_path] = (ta.key, tb.key)
    if over:
        top = max(over.values())
        c.error(
            "rank_exceeds_max",
            f"rank {top} is above the base's max rank {max_rank} in {len(over)} module(s): {_first(sorted(over))}",
            ref,
            f"retrain at rank <= {max_rank}, or export the base with --max-rank {top}",
        )
    for leaf, modules in sorted(missing_targets.items()):
        c.error(
            "target_missing",
            f"target module {leaf} has no attachment point in base {base.ref} "
            f"({len(modules)} module(s), e.g. {modules[0]})",
            leaf,
            f"export the base with {leaf} in --target-modules, or retrain without it",
        )
    if isinstance(cfg.target_modules, list):
        for leaf in cfg.target_modules:
            if (
                leaf not in missing_targets
                and not any(target_matches(m, [leaf]) for m in aps)
                and not any(target_matches(m, [leaf]) for m in by_module)
            ):
                c.warn(
                    "target_missing", f"config lists target {leaf} but neither the base nor the tensors have it", leaf
                )

    if precision == "fp16" and load is not None and c.pairs and not c.problems:
        _check_fp16(c, adapter, load)

    if c.rank and c.rank < max_rank:
        c.warn("rank_padded", f"rank {c.rank} zero-padded to {max_rank} (exact)", ref)
    unt = sorted(set(aps) - set(c.pairs))
    if unt and c.pairs:
        c.warn(
            "zero_filled",
            f"{len(unt)} of {len(aps)} attachment points not targeted; zero-filled (exact): {_first(unt)}",
            ref,
        )
    if prefix_mapped:
        c.warn("prefix_mapped", f"{prefix_mapped} module path(s) matched modulo the wrapper prefix", ref)
    return c


def _check_fp16(c: Check, adapter: Adapter, load: Callable[[str], np.ndarray]) -> None:
    """Values of the prepared (scaled) tensors must fit fp16; bf16 adapters can exceed its range."""
    for module, (ka, kb) in c.pairs.items():
        a, b = load(ka), load(kb)
        s = adapter.scaling.factor(module, a.shape[0])
        ca, cb = canonical_pair(a, b, s, a.shape[0], np.float32)
        worst = max(fp16_overflow(ca), fp16_overflow(cb))
        if worst:
            c.error(
                "precision_loss",
                f"value {worst:.3g} (after scaling) overflows fp16 (max 65504)",
                module,
                "use an fp32 base, or rescale/retrain the adapter",
            )


@dataclass(frozen=True)
class GroupReport(JsonRecord):
    """Several adapters of one base, checked against each other."""

    adapters: list[str]
    effective_max_rank: int
    base_max_rank: int
    attachment_points: int
    problems: list[Problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "adapters": self.adapters,
            "effective_max_rank": self.effective_max_rank,
            "base_max_rank": self.base_max_rank,
            "attachment_points": self.attachment_points,
            "problems": [p.to_json() for p in self.problems],
        }


def _precision_class(dtype: str) -> str:
    """``float`` for a float adapter (mixed dtypes list their float ones first), else its dtype."""
    floats = dtype.startswith("mixed:F") or dtypes.from_safetensors(dtype) in dtypes.LORA_FLOATS
    return "float" if floats else dtype


def group_rule(records: Mapping[str, Adapter], checks: Mapping[str, Check], base: Base) -> GroupReport:
    """Every adapter of a base must share precision class and attachment set (after zero-fill)."""
    problems: list[Problem] = []
    classes = {ref: _precision_class(r.dtype) for ref, r in records.items()}
    if len(set(classes.values())) > 1:
        problems.append(
            Problem(
                "precision_class",
                f"adapters mix precision classes {sorted(set(classes.values()))}",
                ", ".join(sorted(records)),
            )
        )
    known = {ap.module_path for ap in base.attachment_points}
    for ref, c in checks.items():
        if set(c.pairs) - known:
            problems.append(Problem("attachment_set", f"{ref} attaches outside the base's set", ref))
    ranks = {ref: c.rank for ref, c in checks.items() if c.ok}
    return GroupReport(
        sorted(records), max(ranks.values(), default=0), base.max_rank, len(base.attachment_points), problems
    )
