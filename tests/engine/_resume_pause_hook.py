"""A hook that stops ``tools/train_net.py`` at one exact point so a test can SIGKILL it there.

Named in the config (``CUSTOM_IMPORTS ["_resume_pause_hook"] HOOKS ["ResumeTestPause"]``,
with this folder on PYTHONPATH). ``RESUME_TEST_PAUSE=EVENT:ITER`` (e.g. ``after_backward:6``)
prints ``PAUSE EVENT ITER`` on stderr at that event and iteration and waits to be killed.
Without the variable it does nothing, so killed and uninterrupted runs have the same hooks.
It also logs every event it sees to ``$RESUME_TEST_EVENTS`` (one ``EVENT ITER`` a line) when set.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from retinakit.engine import HOOK_REGISTRY, HookBase


class _Pause(HookBase):
    def __init__(self, when: str, events_file: str) -> None:
        self.when, self.events_file = when, events_file

    def _at(self, event: str) -> None:
        it = self.trainer.iter
        if self.events_file:
            with open(self.events_file, "a", encoding="utf-8") as f:
                f.write(f"{event} {it}\n")
        if self.when == f"{event}:{it}":
            print(f"PAUSE {event} {it}", file=sys.stderr, flush=True)
            time.sleep(600)

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
