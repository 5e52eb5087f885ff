"""Reading registered adapter tensors back from the store, one tensor at a time, by the byte ranges
recorded at register time (no header re-parse, no whole-file load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loramgr.errors import IntegrityError
from loramgr.formats.safetensors import TensorInfo, read_tensor


class AdapterFile:
    """Lazy access to a stored adapter's tensors."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.path = Path(record["store_path"])
        self.infos = {t["key"]: TensorInfo(t["key"], t["dtype"], tuple(t["shape"]), *t["offsets"])
                      for t in record["tensor_list"]}
        self._checked = False

    def load(self, key: str) -> np.ndarray:
        if not self._checked:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                raise IntegrityError(str(self.path), f"store file of {self.record['ref']} is missing",
                                     hint="run `loramgr fsck`") from None
            if size != self.record["size"]:
                raise IntegrityError(str(self.path), f"store file of {self.record['ref']} has {size} bytes, "
                                     f"recorded {self.record['size']}", hint="run `loramgr fsck`")
            self._checked = True
        return read_tensor(self.path, self.infos[key])
