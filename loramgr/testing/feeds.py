"""Feeds for one decode step of an exported LM graph, for tests and benchmarks (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def decode_feeds(sess: Any, seed: int = 1, scale: float = 0.1) -> dict[str, np.ndarray]:
    """A value for every input ``sess`` lists (``get_inputs``: LoRA inputs and alpha have defaults and
    are not listed): token 7, a full mask, the position after the past, and random past keys/values
    (one seeded stream, in input order). Symbolic dimensions are 1."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if i.name == "input_ids":
            feeds[i.name] = np.full(shape, 7, np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones(shape, np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.full(shape, shape[-1], np.int64)
        else:
            feeds[i.name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return feeds
