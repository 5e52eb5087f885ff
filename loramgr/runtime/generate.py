"""Greedy decoding over exported prefill/decode graphs (and their parts), with an explicit KV cache.

The graphs' contract (``loramgr base export``): prefill takes ``input_ids [1, S]``, ``attention_mask
[1, S]``, ``position_ids [1, S]``; decode also takes ``past_key_values.<l>.key|value [1, kv, P, d]``
with ``attention_mask [1, P + 1]``; both return ``present.<l>.key|value`` for the new tokens only,
which this driver writes into its own cache buffer (as an on-device runtime does). Parts are chained:
one part's ``hidden_states_out`` is the next part's ``hidden_states``. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loramgr.errors import UsageError

_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(double)": np.float64,
}


#: ONNX metadata of a longrope graph (``base export``): ``original_max_position_embeddings``, where HF
#: switches to the long factors; its graphs take ``rope_long`` to recompute the cache with them
ROPE_SWITCH_KEY = "loramgr.rope_switch"


@dataclass
class Runner:
    """One graph: its input shapes/dtypes, output names and a function feeds -> outputs (in order)."""

    inputs: dict[str, tuple[tuple[int, ...], Any]]
    outputs: list[str]
    fn: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
    meta: dict[str, str] = field(default_factory=dict)  # the model's metadata_props

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.fn({k: v for k, v in feeds.items() if k in self.inputs}), strict=True))

    @classmethod
    def from_session(
        cls,
        session: Any,
        fn: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]] | None = None,
        *,
        extra: dict[str, np.ndarray] | None = None,
        outputs: list[str] | None = None,
    ) -> Runner:
        """From an ``ort.InferenceSession`` (``fn`` defaults to ``session.run(None, feeds)``); inputs
        with a default (LoRA weights, ``rope_long``) count as inputs. ``extra``: feeds added to every
        run (those the session takes), e.g. an adapter's LoRA inputs. ``outputs``: the names to give
        the session's outputs, in order (AIMET's simulation renames quantized graph outputs)."""
        listed = [*session.get_inputs(), *session.get_overridable_initializers()]
        ins = {
            a.name: (tuple(int(d) if isinstance(d, int) else -1 for d in a.shape), _NP.get(a.type, np.float32))
            for a in listed
        }
        outs = outputs or [o.name for o in session.get_outputs()]
        meta = dict(session.get_modelmeta().custom_metadata_map or {})
        if fn is None:
            added = {k: v for k, v in (extra or {}).items() if k in ins}

            def fn(feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
                out: Sequence[np.ndarray] = session.run(None, feeds | added)
                return out

        return cls(ins, outs, fn, meta)


@dataclass
class Generation:
    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)  # one [vocab] row per generated token
    graphs: dict[str, int] = field(default_factory=dict)  # chain lengths: {"prefill": n, "decode": m}


def _run_chain(parts: list[Runner], feeds: dict[str, np.ndarray], presents: dict[str, np.ndarray]) -> np.ndarray:
    feeds = dict(feeds)
    out: dict[str, np.ndarray] = {}
    for r in parts:
        out = r(feeds)
        presents.update({k: v for k, v in out.items() if k.startswith("present.")})
        if "hidden_states_out" in out:
            feeds["hidden_states"] = out["hidden_states_out"]
    if "logits" not in out:
        raise ValueError("the last graph of the chain has no `logits` output")
    return out["logits"]


def capacity(prefill: list[Runner], decode: list[Runner] | None) -> int:
    """How many tokens (prompt + generated, less the last one, which is never fed back) the graphs can
    hold: the KV cache length with a decode graph, else the prefill length."""
    if decode:
        past = [shape[2] for r in decode for n, (shape, _) in r.inputs.items() if n.startswith("past_key_values.")]
        if past:
            return int(past[0])
    return int(prefill[0].inputs["input_ids"][0][1])


def check_request(prompt: Sequence[int], steps: int, *, vocab: int | None, room: int) -> None:
    """Refuse, before any session runs, token ids outside the vocabulary and more tokens than the
    graphs hold (exit 2 naming the limits)."""
    if not prompt:
        raise UsageError("--input-ids", "the prompt is empty")
    if steps < 1:
        raise UsageError(f"--steps {steps}", "must be at least 1")
    bad = [t for t in prompt if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        raise UsageError(f"--input-ids {bad[0]}", f"is outside the vocabulary (0 to {(vocab or 1) - 1})")
    if len(prompt) + steps - 1 > room:
        raise UsageError(
            f"--input-ids/--steps ({len(prompt)} + {steps})",
            f"need {len(prompt) + steps - 1} positions; the graphs hold {room} (prompt + steps - 1 <= {room})",
        )


def prefill_feeds(tokens: Sequence[int], seq: int) -> dict[str, np.ndarray]:
    """A prefill graph's feeds for ``tokens`` (at most ``seq``): right-padded to its fixed length, the
    mask 1 over the tokens only, positions 0..seq-1 (so each row sees only the tokens before it)."""
    n = len(tokens)
    ids = np.zeros((1, seq), np.int64)
    ids[0, :n] = tokens
    mask = np.zeros((1, seq), np.int64)
    mask[0, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": np.arange(seq, dtype=np.int64)[None]}


def _fill_cache(cache: dict[str, np.ndarray], presents: dict[str, np.ndarray], n: int) -> None:
    """The decode cache holds the first ``n`` entries a prefill run returned, zeros after."""
    for name, buf in cache.items():
        buf[:] = 0
        buf[:, :, :n] = presents[name.replace("past_key_values.", "present.")][:, :, :n]


def greedy(
    prefill: list[Runner], decode: list[Runner] | None, prompt: Sequence[int], steps: int, *, vocab: int | None = None
) -> Generation:
    """Generate ``steps`` tokens after ``prompt``; prompts longer than the prefill length continue
    through the decode graph (teacher-forced). The request is checked against ``vocab`` and the
    graphs' capacity first."""
    check_request(prompt, steps, vocab=vocab, room=capacity(prefill, decode))
    seq = prefill[0].inputs["input_ids"][0][1]
    n0 = min(len(prompt), seq)
    presents: dict[str, np.ndarray] = {}
    row = _run_chain(prefill, prefill_feeds(prompt[:n0], seq), presents)[0, n0 - 1]
    if decode is None:
        if len(prompt) > seq:
            raise ValueError(f"without a decode graph, the prompt must fit the prefill length {seq}")
        toks = list(prompt)
        gen = Generation([])
        while True:
            t = int(np.argmax(row))
            gen.tokens.append(t)
            gen.logits.append(row)
            toks.append(t)
            if len(gen.tokens) == steps:
                return gen
            if len(toks) > seq:
                raise ValueError(f"without a decode graph, prompt + steps must fit the prefill length {seq}")
            row = _run_chain(prefill, prefill_feeds(toks, seq), {})[0, len(toks) - 1]
    cache = {}
    for r in decode:
        for name, (shape, dt) in r.inputs.items():
            if name.startswith("past_key_values."):
                cache[name] = np.zeros(shape, dt)
    if not cache:
        raise ValueError("the decode graph has no past_key_values inputs")
    past = next(iter(cache.values())).shape[2]
    _fill_cache(cache, presents, n0)
    fed = list(prompt[:n0])
    pending = list(prompt[n0:])
    switch = rope_switch(decode)
    gen = Generation([])
    while len(gen.tokens) < steps:
        if pending:
            tok = pending.pop(0)
        else:
            tok = int(np.argmax(row))
            gen.tokens.append(tok)
            gen.logits.append(row)
            if len(gen.tokens) == steps:
                break
        if len(fed) >= past:
            raise ValueError(f"the KV cache ({past} entries) is full")
        if switch is not None and len(fed) == switch:  # HF's generate recomputes its cache here, long factors
            _recompute(prefill, decode, fed, cache)
        row = _decode_step(decode, tok, len(fed), cache, long=switch is not None and len(fed) >= switch)
        fed.append(tok)
    return gen


def rope_switch(graphs: list[Runner]) -> int | None:
    """A longrope model's switch point, when its graphs take ``rope_long`` (``base export``)."""
    for r in graphs:
        if "rope_long" in r.inputs and ROPE_SWITCH_KEY in r.meta:
            return int(r.meta[ROPE_SWITCH_KEY])
    return None


def _decode_step(decode: list[Runner], tok: int, pos: int, cache: dict[str, np.ndarray], *, long: bool) -> np.ndarray:
    """Feed one token at ``pos`` through the decode chain, write its K/V into ``cache``; its logits row."""
    past = next(iter(cache.values())).shape[2]
    m = np.zeros((1, past + 1), np.int64)
    m[0, :pos] = 1
    m[0, past] = 1
    step: dict[str, np.ndarray] = {}
    feeds = {
        "input_ids": np.array([[tok]], np.int64),
        "attention_mask": m,
        "position_ids": np.array([[pos]], np.int64),
        "rope_long": np.array([int(long)], np.int64),
        **cache,
    }
    row: np.ndarray = _run_chain(decode, feeds, step)[0, 0]
    for name, buf in cache.items():
        buf[:, :, pos] = step[name.replace("past_key_values.", "present.")][:, :, 0]
    return row


def _recompute(prefill: list[Runner], decode: list[Runner], tokens: list[int], cache: dict[str, np.ndarray]) -> None:
    """Rebuild the cache of ``tokens`` with longrope's long factors (``rope_long`` = 1): what HF's
    generate does once the sequence passes ``original_max_position_embeddings`` (Phi-3's
    ``prepare_inputs_for_generation``), so the keys cached before the switch match a full forward."""
    seq = prefill[0].inputs["input_ids"][0][1]
    n0 = min(len(tokens), seq)
    presents: dict[str, np.ndarray] = {}
    _run_chain(prefill, prefill_feeds(tokens[:n0], seq) | {"rope_long": np.ones(1, np.int64)}, presents)
    _fill_cache(cache, presents, n0)
    for pos in range(n0, len(tokens)):
        _decode_step(decode, tokens[pos], pos, cache, long=True)
