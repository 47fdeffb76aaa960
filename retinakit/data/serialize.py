"""A list of dataset dicts stored as one pickled byte buffer (cheap to share with workers)."""
from __future__ import annotations

import pickle
from typing import Any

import numpy as np

__all__ = ["SerializedList"]


class SerializedList:
    """Read-only list whose items are pickled into a single numpy buffer.

    Forked data-loader workers then share pages instead of copying Python objects
    (reference counting would otherwise touch, and copy, every dict).
    """

    def __init__(self, items: list[Any]) -> None:
        blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, idx: int) -> Any:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} items")
        start = 0 if idx == 0 else int(self._ends[idx - 1])
        return pickle.loads(memoryview(self._data[start : int(self._ends[idx])]))
