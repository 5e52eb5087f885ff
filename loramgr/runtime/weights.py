"""One copy of a base's weights for every graph's session (prefill, decode, parts).

Each ONNX Runtime session would otherwise load its graph's external data into memory of its own and
pre-pack it: a prefill + decode pair holds the weights twice (``run_rss_over_weights`` in the
benchmarks measured 2.1x the weight bytes). Here each distinct external data file (by the sha256 the
plan records, after the plan has verified it) is memory-mapped once, read-only; every initializer
stored there becomes an ``OrtValue`` over that mapping and is handed to each session with
``SessionOptions.add_initializer``. Pre-packing is turned off for those sessions (``session.
disable_prepacking``): pre-packed copies are per session and Python has no shared pre-packed
container. The trade, measured on a hidden-2048 Llama (4 layers): peak RSS 1.1x the weights instead
of 2.1x and sessions created in milliseconds, for a fp32 prefill about 1.4x slower and a decode step
about 1.1x slower (1.03-1.18x, ``decode_shared_weights`` in the benchmarks): ONNX Runtime's pre-packed
layout is faster to multiply, and a pre-packed copy is a copy per session. ``loramgr run`` uses it
(``--no-share-weights`` turns it off); ``LoraSession`` takes it as ``weights=``, which also gives the
default adapter its fast path (:mod:`loramgr.runtime.fastpath`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from loramgr.runtime import Plan

#: ONNX element types whose bytes are viewed directly (others stay with ONNX Runtime's own loader)
_NP = {1: np.float32, 10: np.float16, 11: np.float64, 3: np.int8, 2: np.uint8, 5: np.int16, 6: np.int32, 7: np.int64}


class SharedWeights:
    """Memory-mapped external data of a plan's graphs, shared by the sessions built with it. Keep it
    alive as long as those sessions: their initializers point into its mappings."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._maps: dict[str, np.ndarray] = {}  # sha256 of a data file -> its read-only mapping
        self._values: dict[tuple[str, int, int, int, tuple[int, ...]], Any] = {}  # one OrtValue per tensor
        self._lock = threading.Lock()

    def session_options(self, graph: str, options: Any, model: Any = None) -> Any:
        """``options`` (a ``SessionOptions``) with every external initializer of ``graph`` taken from
        the shared mappings and pre-packing off. ``model``: an in-memory variant of the graph (an
        ``onnx.ModelProto`` over the same external data, e.g. without its LoRA branches); None: the
        graph's file."""
        options.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in self.initializers(graph, model).items():
            options.add_initializer(name, value)
        return options

    def initializers(self, graph: str, model: Any = None) -> dict[str, Any]:
        """Initializer name -> ``OrtValue`` over the shared mapping, for every external initializer of
        ``graph`` (or of ``model``, see :meth:`session_options`) that can be viewed in place."""
        import onnx

        g = self.plan.graphs[graph]
        path = self.plan.graph_file(graph)  # verifies the graph and its data files (once per identity)
        by_name = {Path(self.plan.file(e).path).name: e for e in g.get("external_data", [])}
        if model is None:
            model = onnx.load(str(path), load_external_data=False)
        out: dict[str, Any] = {}
        for t in model.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL or t.data_type not in _NP:
                continue
            info = {e.key: e.value for e in t.external_data}
            entry = by_name.get(Path(info.get("location", "")).name)
            dtype = np.dtype(_NP[t.data_type])
            off, length = int(info.get("offset", 0)), int(info.get("length", -1))
            shape = tuple(int(d) for d in t.dims)
            if entry is None or off % dtype.itemsize or length != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                continue  # not a file the plan lists, or not viewable in place: ONNX Runtime loads it itself
            value = self._value(entry, off, length, dtype, shape)
            if value is not None:
                out[t.name] = value
        return out

    def _value(self, entry: dict[str, Any], off: int, length: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        import onnxruntime as ort

        sha = str(entry["sha256"])
        key = (sha, off, length, dtype.num, shape)
        with self._lock:
            if key in self._values:
                return self._values[key]
            if sha not in self._maps:
                self._maps[sha] = np.memmap(self.plan.file(entry).path, dtype=np.uint8, mode="r")
            data = self._maps[sha]
            if off + length > data.size:
                return None
            arr = data[off : off + length].view(dtype).reshape(shape)
            self._values[key] = ort.OrtValue.ortvalue_from_numpy(arr)
            return self._values[key]
