"""A metrics.json write that fails (disk full) leaves no torn line, warns once with the file and
the free space, and does not stop training: the next write appends valid rows (issue 20)."""
from __future__ import annotations

import errno
import json
import logging

from retinakit.utils import events
from retinakit.utils.events import EventStorage, JSONWriter


class _HalfThenFull:
    """A binary file whose writes store half of the bytes, then fail with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def write(self, data: bytes) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def test_failed_metrics_write_leaves_whole_lines_and_training_goes_on(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage(0) as storage:
        storage.put_scalar("loss", 1.5, smoothing_hint=False)
        writer.write()
        storage.iter = 1
        storage.put_scalar("loss", 1.25, smoothing_hint=False)
        real_open = open
        monkeypatch.setattr(events, "open", lambda *a, **k: _HalfThenFull(real_open(*a, **k)), raising=False)
        with caplog.at_level(logging.WARNING, logger="retinakit.trainer"):
            writer.write()  # must not raise
        monkeypatch.undo()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(path) in warnings[0] and "free space there" in warnings[0], warnings
        assert [json.loads(x) for x in path.read_text().splitlines()] == [{"iteration": 0, "loss": 1.5}]
        storage.iter = 2
        storage.put_scalar("loss", 1.0, smoothing_hint=False)
        writer.write()
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 2] and rows[-1]["loss"] == 1.0
