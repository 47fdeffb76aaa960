"""Exit codes of a training process, shared by ``tools/train_net.py`` and ``retinakit train``.

A user error (config, data, weights file: :func:`retinakit.utils.errors.user_error_message`)
exits with :data:`~retinakit.utils.errors.EXIT_USER_ERROR` (2) and one message, a non-finite
loss with :data:`EXIT_NON_FINITE` (3), a stopping signal (after the trainer wrote its
checkpoint) with 128 + the signal number, as a shell reports a process killed by it.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ..utils import comm
from ..utils.errors import EXIT_USER_ERROR, user_error_message
from .train_loop import NonFiniteLossError, TrainingInterrupted

__all__ = ["EXIT_NON_FINITE", "run_with_exit_codes"]

EXIT_NON_FINITE = 3
T = TypeVar("T")


def run_with_exit_codes(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with the exits of the module docstring (in every process of a launch)."""
    try:
        return fn(*args)
    except NonFiniteLossError as e:
        logging.getLogger("retinakit").error(str(e))
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NON_FINITE) from e
    except TrainingInterrupted as e:
        raise SystemExit(128 + e.signum) from e
    except Exception as e:
        msg = user_error_message(e)
        if msg is None:
            raise
        if comm.is_main_process():
            print(f"ERROR: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from e
