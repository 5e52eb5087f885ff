"""Reading registered adapter tensors back from the store, one tensor at a time, by the byte ranges
recorded at register time (no header re-parse, no whole-file load)."""

from __future__ import annotations

import numpy as np

from loramgr.errors import IntegrityError
from loramgr.formats.safetensors import read_tensor
from loramgr.records import Adapter


class AdapterFile:
    """Lazy access to a stored adapter's tensors."""

    def __init__(self, record: Adapter) -> None:
        self.record = record
        self.path = record.store_path
        self.infos = {t.key: t for t in record.tensor_list()}
        self._checked = False

    def load(self, key: str) -> np.ndarray:
        if not self._checked:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                raise IntegrityError(
                    str(self.path), f"store file of {self.record.ref} is missing", hint="run `loramgr fsck`"
                ) from None
            if size != self.record.size:
                raise IntegrityError(
                    str(self.path),
                    f"store file of {self.record.ref} has {size} bytes, recorded {self.record.size}",
                    hint="run `loramgr fsck`",
                )
            self._checked = True
        arr: np.ndarray = read_tensor(self.path, self.infos[key])
        return arr
