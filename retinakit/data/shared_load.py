"""Load the datasets once per job: rank 0 loads, the other ranks wait and receive the result.

Validation (and the image-header probe) then runs once per dataset version: on rank 0, and
only when its cache entry is missing or stale. The other ranks receive the serialized
records as two arrays, straight into their own buffers (a gloo broadcast, no pickling of
the records), plus the category metadata that loading set on rank 0. An error on rank 0
(a bad JSON, a missing image) is sent to every rank and raised there too, so no rank is
left waiting.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..utils import comm
from .catalog import MetadataCatalog
from .serialize import SerializedList

__all__ = ["load_on_first_rank"]

logger = logging.getLogger(__name__)
_CATEGORY_KEYS = ("thing_classes", "thing_dataset_id_to_contiguous_id", "thing_contiguous_id_to_dataset_id")


def _categories_set(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The category metadata already set (not pending a lazy read) of each dataset."""
    out = {}
    for n in names:
        meta = MetadataCatalog.get(n)
        out[n] = {k: meta.__dict__[k] for k in _CATEGORY_KEYS if k in meta.__dict__}
    return out


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception type that does not survive pickling
        return RuntimeError(f"{type(e).__name__}: {e}")


def load_on_first_rank(load: Callable[[], SerializedList], names: Sequence[str]) -> SerializedList:
    """``load()`` run on rank 0 only; every rank returns the same records. A collective:
    every rank must call it (the loader builders do). Without torch.distributed it is
    ``load()``."""
    if comm.get_world_size() == 1:
        return load()
    header: Any = None
    records = None
    if comm.get_rank() == 0:
        try:
            records = load()
            data, ends = records.buffers()
            header = ("ok", records.codec, len(data), len(ends), _categories_set(names))
        except Exception as e:
            comm.broadcast_object(("error", _picklable(e)))
            raise
    else:
        logger.info("Waiting for rank 0 to load %s.", ", ".join(names))
    header = comm.broadcast_object(header)
    if header[0] == "error":
        raise header[1]
    _, codec, size, count, categories = header
    data = comm.broadcast_array(records.buffers()[0] if records is not None else None, (size,), np.dtype(np.uint8))
    ends = comm.broadcast_array(records.buffers()[1] if records is not None else None, (count,), np.dtype(np.int64))
    if records is not None:
        return records
    for name, values in categories.items():
        meta = MetadataCatalog.get(name)
        for key, value in values.items():
            setattr(meta, key, value)
    return SerializedList.from_buffers(data, ends, codec)
