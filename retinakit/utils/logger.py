"""Logging set-up (called by ``default_setup``, never at import)."""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logger"]


class _ShortFormatter(logging.Formatter):
    """``[HH:MM:SS name]: message``, with WARNING/ERROR prefixed."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.ERROR:
            return "ERROR " + msg
        if record.levelno >= logging.WARNING:
            return "WARNING " + msg
        return msg


def setup_logger(
    output: str | None = None, distributed_rank: int = 0, name: str = "retinakit", level: int = logging.INFO
) -> logging.Logger:
    """Configure logger ``name``: console on rank 0, and ``output`` (a file or a dir -> log.txt).

    Other ranks log to ``log.txt.rank{r}``. Calling it again replaces the handlers it added.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, "_retinakit", False):
            logger.removeHandler(h)
            h.close()
    fmt = _ShortFormatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    if distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setFormatter(fmt)
        ch._retinakit = True  # type: ignore[attr-defined]
        logger.addHandler(ch)
    if output:
        path = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            path = f"{path}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
        fh._retinakit = True  # type: ignore[attr-defined]
        logger.addHandler(fh)
    return logger
