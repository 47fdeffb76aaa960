"""A hook that stops ``tools/train_net.py`` at one exact point so a test can SIGKILL it there.

Named in the config (``CUSTOM_IMPORTS ["_resume_pause_hook"] HOOKS ["ResumeTestPause"]``,
with this folder on PYTHONPATH). ``RESUME_TEST_PAUSE=EVENT:ITER`` (e.g. ``after_backward:6``)
prints ``PAUSE EVENT ITER`` on stderr at that event and iteration and waits to be killed.
Without the variable it does nothing, so killed and uninterrupted runs have the same hooks.
It also logs every event it sees to ``$RESUME_TEST_EVENTS`` (one ``EVENT ITER`` a line) when set.

Faults (issue 20): ``RESUME_TEST_SIGNAL=EVENT:ITER:SIGNAME[:COUNT[:RANK]]`` sends the process SIGNAME
(e.g. ``SIGTERM``) COUNT times (default 1) at that event, as a pre-emption notice would (on
rank RANK only when given);
``RESUME_TEST_SELF_KILL=EVENT:ITER:RANK`` SIGKILLs rank RANK there, in the first round of a
torchrun run only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), like an OOM kill of one worker.
``RESUME_TEST_ENOSPC=NAME`` makes the write of checkpoint NAME fail like a full disk: ``torch.save``
writes half of its bytes into the temp file, then raises ``OSError(ENOSPC)``.

Importing it also wraps the checkpointer's file steps (in this test process only; the library
has no test hook): ``RESUME_TEST_CHECKPOINT_PAUSE=STAGE:NAME`` stops the process at that stage
of saving checkpoint NAME, announced as ``CHECKPOINT_PAUSE STAGE:NAME`` on stderr. Stages:
``tmp_written`` (temp file complete, not renamed), ``renamed`` (file in place, ``last_checkpoint``
not moved yet), ``saved`` (both done).
"""
from __future__ import annotations

import errno
import io
import os
import signal
import sys
import time
from typing import Any

import torch

from retinakit.checkpoint import checkpointer
from retinakit.engine import HOOK_REGISTRY, HookBase

CHECKPOINT_PAUSE_ENV = "RESUME_TEST_CHECKPOINT_PAUSE"


def _wait_to_be_killed(announce: str) -> None:
    print(announce, file=sys.stderr, flush=True)
    time.sleep(600)


def _checkpoint_pause(stage: str, path: str) -> None:
    if os.environ.get(CHECKPOINT_PAUSE_ENV) == f"{stage}:{os.path.basename(path)}":
        _wait_to_be_killed(f"CHECKPOINT_PAUSE {stage}:{os.path.basename(path)}")


def _wrap_checkpointer() -> None:
    """Pause points around the checkpointer's steps: the temp file's rename (``os.replace`` as
    the checkpointer module calls it), the checkpoint file written, and ``Checkpointer.save``."""
    real_os, real_save_file, real_save = checkpointer.os, checkpointer.atomic_torch_save, checkpointer.Checkpointer.save

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_os, name)

        @staticmethod
        def replace(src: str, dst: str) -> None:
            _checkpoint_pause("tmp_written", dst)
            real_os.replace(src, dst)

    def atomic_torch_save(obj: Any, path: str) -> None:
        real_save_file(obj, path)
        _checkpoint_pause("renamed", path)

    def save(self: Any, name: str, **extra: Any) -> Any:
        path = real_save(self, name, **extra)
        if path:
            _checkpoint_pause("saved", path)
        return path

    checkpointer.os, checkpointer.atomic_torch_save, checkpointer.Checkpointer.save = _Os(), atomic_torch_save, save


def _fail_write_like_a_full_disk() -> None:
    name = os.environ.get("RESUME_TEST_ENOSPC", "")
    if not name:
        return
    real = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if f".{name}.tmp." not in str(getattr(f, "name", "")):
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        print(f"ENOSPC {name}", file=sys.stderr, flush=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = save


_wrap_checkpointer()
_fail_write_like_a_full_disk()


def _fault(event: str, it: int) -> None:
    """Send the signals that RESUME_TEST_SIGNAL / RESUME_TEST_SELF_KILL ask for at (event, it)."""
    spec = os.environ.get("RESUME_TEST_SIGNAL", "").split(":")
    rank_ok = len(spec) < 5 or spec[4] == os.environ.get("RANK", "0")
    if len(spec) >= 3 and spec[:2] == [event, str(it)] and rank_ok:
        for _ in range(int(spec[3]) if len(spec) > 3 else 1):
            os.kill(os.getpid(), getattr(signal, spec[2]))
    kill = os.environ.get("RESUME_TEST_SELF_KILL", "").split(":")
    first_round = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if len(kill) == 3 and kill[:2] == [event, str(it)] and kill[2] == os.environ.get("RANK", "0") and first_round:
        print(f"SELF_KILL {event} {it} rank {kill[2]}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class _Pause(HookBase):
    def __init__(self, when: str, events_file: str) -> None:
        self.when, self.events_file = when, events_file

    def _at(self, event: str) -> None:
        it = self.trainer.iter
        if self.events_file:
            with open(self.events_file, "a", encoding="utf-8") as f:
                f.write(f"{event} {it}\n")
        if self.when == f"{event}:{it}":
            _wait_to_be_killed(f"PAUSE {event} {it}")
        _fault(event, it)

    def before_train(self) -> None:
        self._at("before_train")

    def before_step(self) -> None:
        self._at("before_step")

    def after_backward(self) -> None:
        self._at("after_backward")

    def after_step(self) -> None:
        self._at("after_step")

    def after_train(self) -> None:
        self._at("after_train")


@HOOK_REGISTRY.register()
def ResumeTestPause(cfg: Any, trainer: Any) -> HookBase:
    return _Pause(os.environ.get("RESUME_TEST_PAUSE", ""), os.environ.get("RESUME_TEST_EVENTS", ""))
