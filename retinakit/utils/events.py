"""Metrics storage and writers: console line, ``metrics.json`` and TensorBoard events.

Code running inside a training step logs scalars with
``get_event_storage().put_scalar(name, value)``; writer hooks periodically read the
storage and write it out.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from typing import Any

import torch

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "TensorboardWriter",
    "get_event_storage",
]

_STORAGE_STACK: list[EventStorage] = []


def get_event_storage() -> EventStorage:
    """The innermost :class:`EventStorage` in use (the trainer opens one in ``train()``)."""
    if not _STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside a 'with EventStorage(...)' block.")
    return _STORAGE_STACK[-1]


class HistoryBuffer:
    """(value, iteration) pairs of one scalar, with median/avg over the last N values."""

    def __init__(self, max_length: int = 10000) -> None:
        self.max_length = max_length
        self.values: list[tuple[float, int]] = []
        self.total = 0.0
        self.count = 0

    def update(self, value: float, iteration: int) -> None:
        if len(self.values) == self.max_length:
            self.values.pop(0)
        self.values.append((value, iteration))
        self.total += value
        self.count += 1

    def latest(self) -> float:
        return self.values[-1][0]

    def median(self, window: int) -> float:
        vals = sorted(v for v, _ in self.values[-window:])
        return vals[len(vals) // 2]

    def avg(self, window: int) -> float:
        vals = [v for v, _ in self.values[-window:]]
        return sum(vals) / len(vals)

    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class EventStorage:
    """Scalars logged during training, keyed by name, with the iteration they belong to."""

    def __init__(self, start_iter: int = 0) -> None:
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._latest: dict[str, tuple[float, int]] = {}
        self._smoothing: dict[str, bool] = {}
        self.iter = start_iter
        self._vis: list[tuple[str, Any, int]] = []

    def put_scalar(self, name: str, value: Any, smoothing_hint: bool = True) -> None:
        """Record ``value`` (float or 0-dim tensor) for the current iteration."""
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._smoothing.setdefault(name, smoothing_hint)

    def put_scalars(self, smoothing_hint: bool = True, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint)

    def put_image(self, name: str, image_chw: torch.Tensor) -> None:
        """Queue an image (CHW uint8 tensor) for TensorBoard."""
        self._vis.append((name, image_chw, self.iter))

    def pop_images(self) -> list[tuple[str, Any, int]]:
        out, self._vis = self._vis, []
        return out

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"No scalar named {name} was logged.")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        """name -> (latest value, iteration it was logged at)."""
        return self._latest

    def latest_with_smoothing_hint(self, window: int = 20) -> dict[str, tuple[float, int]]:
        """Like :meth:`latest`, with smoothed scalars replaced by their median over ``window``."""
        out = {}
        for k, (v, it) in self._latest.items():
            out[k] = (self._history[k].median(window) if self._smoothing[k] else v, it)
        return out

    def step(self) -> None:
        self.iter += 1

    def __enter__(self) -> EventStorage:
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert _STORAGE_STACK[-1] is self
        _STORAGE_STACK.pop()


class EventWriter:
    """Base class of writers; ``write()`` is called periodically by the writer hook."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration (``{"iteration": i, name: value, ...}``) to a file.

    Only values logged since the last write are written, so it appends safely after a
    resume (rows of later iterations than the checkpoint are dropped on resume by the
    trainer's caller if needed).
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        self._path = json_file
        self._window = window_size
        self._last_written = -1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: dict[int, dict[str, float]] = defaultdict(dict)
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window).items():
            if it > self._last_written:
                by_iter[it][k] = v
        if not by_iter:
            return
        text = "".join(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=True) + "\n" for it in sorted(by_iter))
        self._last_written = max(by_iter)
        append_or_warn(self._path, text)


def append_or_warn(path: str, text: str) -> bool:
    """Append ``text`` (whole lines) to ``path``; on a write error (disk full, I/O error) cut the
    file back to its previous length, so no torn line is left, and log one warning naming the
    file, the error and the free space. Training goes on: a metrics row is not worth a run."""
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(text.encode("utf-8"))
                f.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
        return True
    except OSError as e:
        _warn_write_error(path, e)
        return False


def _warn_write_error(path: str, e: OSError) -> None:
    try:
        free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f} MiB"
    except OSError:
        free = "unknown"
    logging.getLogger("retinakit.trainer").warning(
        f"Could not write {path} ({e.strerror or e}; free space there: {free}): these metrics are skipped, training goes on."
    )


class TensorboardWriter(EventWriter):
    """Writes scalars (and queued images) as TensorBoard events under ``log_dir``."""

    def __init__(self, log_dir: str, window_size: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window = window_size
        self._last_written = -1

    def write(self) -> None:
        storage = get_event_storage()
        newest = self._last_written
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window).items():
            if it > self._last_written:
                self._writer.add_scalar(k, v, it)
                newest = max(newest, it)
        for name, img, it in storage.pop_images():
            self._writer.add_image(name, img, it)
        self._last_written = newest
        try:
            self._writer.flush()
        except OSError as e:  # disk full / I/O error: warn, keep training
            _warn_write_error(self._writer.log_dir, e)

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Console line: iteration, ETA, losses, lr, images/s, time/iter and peak memory."""

    def __init__(self, max_iter: int, ims_per_batch: int | None = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger("retinakit.trainer")
        self._max_iter = max_iter
        self._ims = ims_per_batch
        self._window = window_size
        self._last_printed = -1

    def _eta(self, storage: EventStorage, it: int) -> str:
        try:
            t = storage.history("time").median(1000)
        except KeyError:
            return "N/A"
        left = max(self._max_iter - it - 1, 0)
        return str(datetime.timedelta(seconds=int(t * left)))

    def write(self) -> None:
        storage = get_event_storage()
        latest = storage.latest().get("total_loss")
        if latest is None or latest[1] == self._last_printed:
            return  # nothing new since the last line (e.g. the final write after training)
        it = self._last_printed = latest[1]
        hist = storage.histories()
        losses = "  ".join(
            f"{k}: {h.median(self._window):.4g}" for k, h in hist.items() if "loss" in k
        )
        parts = [f"eta: {self._eta(storage, it)}", f"iter: {it + 1}/{self._max_iter}", losses]
        if "time" in hist:
            t = hist["time"].avg(self._window)
            parts.append(f"time: {t:.4f}s")
            if self._ims:
                parts.append(f"images/s: {self._ims / max(t, 1e-9):.1f}")
        if "lr" in hist:
            parts.append(f"lr: {hist['lr'].latest():.5g}")
        mem = _peak_memory_mb()
        if mem is not None:
            parts.append(f"max_mem: {mem:.0f}M")
        self.logger.info("  ".join(p for p in parts if p))


def _peak_memory_mb() -> float | None:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in MB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return rss / 1024.0
    except (ImportError, OSError):
        return None


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def write_metrics_row(path: str, row: dict[str, Any]) -> None:
    """Append one JSON object to ``metrics.json`` (used by the evaluation watcher)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
