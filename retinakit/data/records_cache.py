"""A file cache of validated COCO dataset dicts, so that a repeated load skips parsing and probing.

One entry per (JSON file, image root, validation options), named by a hash of them, in
``DATASETS.CACHE_DIR``. It holds the records as a JSON-codec :class:`SerializedList` (the
two arrays, no pickle: reading a cache never runs code) and a JSON header: the JSON file's
size and mtime, a fingerprint (size + mtime) of every image file whose header was read,
the categories and the "skip" summary lines. An entry is used only when all of these still
match; a stale or unreadable one is ignored with one log line and rewritten. Writes go to a
temporary file in the same folder, renamed into place (readers never see half a file).
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from .serialize import SerializedList

__all__ = ["CACHE_VERSION", "CachedRecords", "default_cache_dir", "entry_path", "files_fingerprint", "read_entry", "write_entry"]

logger = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the records or their validation change


class CachedRecords(msgspec.Struct):
    """What a cache entry holds besides the records (its JSON header)."""

    version: int
    key: dict[str, Any]
    json_size: int
    json_mtime_ns: int
    probed: list[str]
    probed_fingerprint: str
    classes: list[str]
    id_map: list[tuple[int, int]]
    summaries: list[str]


def default_cache_dir() -> str:
    """``$RETINAKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/retinakit/datasets`` (``~/.cache/...``)."""
    if os.environ.get("RETINAKIT_CACHE_DIR"):
        return os.environ["RETINAKIT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "retinakit", "datasets")


def entry_path(cache_dir: str, key: dict[str, Any]) -> str:
    """Path of the entry for ``key`` (JSON file, image root, options): ``<stem>-<hash>.npz``."""
    digest = hashlib.sha256(msgspec.json.encode([CACHE_VERSION, key], order="sorted")).hexdigest()[:20]
    stem = os.path.splitext(os.path.basename(str(key.get("json_file", "dataset"))))[0][:40]
    return os.path.join(cache_dir, f"{stem}-{digest}.npz")


def files_fingerprint(paths: Sequence[str]) -> str:
    """Hash of ``(path, size, mtime_ns)`` of every file (a missing file counts as such)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stale_reason(meta: CachedRecords, key: dict[str, Any], json_stat: os.stat_result) -> str | None:
    if meta.version != CACHE_VERSION or meta.key != key:
        return "it was written by another retinakit version or for other options"
    if (meta.json_size, meta.json_mtime_ns) != (json_stat.st_size, json_stat.st_mtime_ns):
        return f"{key['json_file']} changed since"
    if files_fingerprint(meta.probed) != meta.probed_fingerprint:
        return "an image file changed, appeared or disappeared since"
    return None


def read_entry(path: str, key: dict[str, Any]) -> tuple[SerializedList, CachedRecords] | None:
    """The records and header of the entry at ``path`` if it is current for ``key``; None
    (with one log line) when there is none, or it is stale or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        json_stat = os.stat(key["json_file"])
        with np.load(path, allow_pickle=False) as z:
            meta = msgspec.json.decode(z["meta"].tobytes(), type=CachedRecords)
            reason = _stale_reason(meta, key, json_stat)
            if reason:
                logger.info("Dataset cache %s is stale (%s): validating %s again.", path, reason, key["json_file"])
                return None
            records = SerializedList.from_buffers(z["data"], z["ends"], "json")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, msgspec.DecodeError, msgspec.ValidationError) as e:
        logger.warning(
            "Dataset cache %s is unreadable (%s: %s): ignoring it and validating %s again.", path, type(e).__name__, e, key["json_file"]
        )
        return None
    return records, meta


def write_entry(path: str, records: SerializedList, meta: CachedRecords) -> bool:
    """Write the entry atomically (temporary file + rename); a failure is logged, not raised
    (the dataset is loaded anyway, only the next load is not faster). True when written."""
    if records.codec != "json":
        raise ValueError("Only JSON-codec records are cached (a cache must not hold pickles).")
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    data, ends = records.buffers()
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, data=data, ends=ends, meta=np.frombuffer(msgspec.json.encode(meta), dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("Cannot write the dataset cache %s (%s); set DATASETS.CACHE_DIR to a writable folder.", path, e)
        if os.path.exists(tmp):
            os.remove(tmp)
        return False
    return True
