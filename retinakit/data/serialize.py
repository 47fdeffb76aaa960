"""A list of dataset dicts stored as one byte buffer (cheap to share with workers and ranks)."""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec
import numpy as np

__all__ = ["CODECS", "SerializedList"]

CODECS = ("pickle", "json")
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()


def _encode(item: Any, codec: str) -> bytes:
    if codec == "json":
        return _JSON_ENCODER.encode(item)
    return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


class SerializedList(Sequence):
    """Read-only list whose items are serialized into a single ``uint8 [S]`` numpy buffer.

    ``ends`` (``int64 [N]``) holds the end offset of each item. Forked data-loader workers
    share the two arrays' pages instead of copying Python objects (reference counting would
    otherwise touch, and copy, every dict). ``codec`` "pickle" takes any picklable item;
    "json" (msgspec) takes JSON-typed items only (dicts with str keys, lists, str, int,
    float, bool, None: tuples come back as lists) and is safe to read back from a file.
    """

    def __init__(self, items: Iterable[Any], codec: str = "pickle") -> None:
        if codec not in CODECS:
            raise ValueError(f"SerializedList codec must be one of {CODECS}, got {codec!r}.")
        blobs = [_encode(x, codec) for x in items]
        self.codec = codec
        self._ends = np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)))
        self._data = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy() if blobs else np.zeros(0, dtype=np.uint8)

    @classmethod
    def from_buffers(cls, data: np.ndarray, ends: np.ndarray, codec: str) -> SerializedList:
        """The list whose buffers are ``data`` (``uint8 [S]``) and ``ends`` (``int64 [N]``)."""
        if codec not in CODECS:
            raise ValueError(f"SerializedList codec must be one of {CODECS}, got {codec!r}.")
        if data.dtype != np.uint8 or data.ndim != 1 or ends.dtype != np.int64 or ends.ndim != 1:
            got = f"{data.dtype}{list(data.shape)}, {ends.dtype}{list(ends.shape)}"
            raise ValueError(f"SerializedList buffers must be uint8 [S] and int64 [N], got {got}.")
        if len(ends) and (int(ends[-1]) != len(data) or bool(np.any(np.diff(ends) < 0)) or int(ends[0]) < 0):
            raise ValueError("SerializedList buffers are inconsistent: the item ends must rise to the data length.")
        out = cls.__new__(cls)
        out.codec, out._data, out._ends = codec, data, ends
        return out

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(data uint8 [S], ends int64 [N])`` (shared, not copied)."""
        return self._data, self._ends

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return int(self._data.nbytes + self._ends.nbytes)

    def select(self, positions: Sequence[int]) -> SerializedList:
        """A new list of the items at ``positions`` (in that order), copying bytes only."""
        starts = np.concatenate([[0], self._ends[:-1]]) if len(self) else self._ends
        pos = np.asarray(positions, dtype=np.int64)
        lengths = self._ends[pos] - starts[pos]
        chunks = [self._data[s:e] for s, e in zip(starts[pos].tolist(), self._ends[pos].tolist())]
        data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
        return SerializedList.from_buffers(data, np.cumsum(lengths, dtype=np.int64), self.codec)

    @staticmethod
    def concat(parts: Sequence[SerializedList]) -> SerializedList:
        """The items of ``parts`` one after the other (all must have the same codec)."""
        codecs = {p.codec for p in parts}
        if len(codecs) != 1:
            raise ValueError(f"SerializedList.concat needs parts of one codec, got {sorted(codecs)}.")
        offsets = np.cumsum([0] + [len(p._data) for p in parts[:-1]], dtype=np.int64)
        ends = np.concatenate([p._ends + off for p, off in zip(parts, offsets)])
        return SerializedList.from_buffers(np.concatenate([p._data for p in parts]), ends.astype(np.int64), codecs.pop())

    def __len__(self) -> int:
        return len(self._ends)

    def _item(self, idx: int) -> Any:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} items")
        start = 0 if idx == 0 else int(self._ends[idx - 1])
        view = memoryview(self._data[start : int(self._ends[idx])])
        return _JSON_DECODER.decode(view) if self.codec == "json" else pickle.loads(view)

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, slice):
            return [self._item(i) for i in range(*idx.indices(len(self)))]
        return self._item(int(idx))

    def __iter__(self) -> Iterator[Any]:
        return (self._item(i) for i in range(len(self)))
