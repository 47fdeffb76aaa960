"""Training hooks and ``HOOK_REGISTRY``.

Hooks named in the config key ``HOOKS`` are built as ``HOOK_REGISTRY.get(name)(cfg, trainer)``
and must return a :class:`HookBase`. Register your own from a package listed in
``CUSTOM_IMPORTS``::

    @HOOK_REGISTRY.register()
    def MyHook(cfg, trainer):
        return MyHookClass(...)
"""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..checkpoint.checkpointer import Checkpointer, CheckpointWriteError, get_rng_state, set_rng_state
from ..utils import comm
from ..utils.events import EventWriter
from ..utils.registry import Registry
from .train_loop import HookBase, TrainingInterrupted

__all__ = [
    "HOOK_REGISTRY",
    "BestCheckpointer",
    "CallbackHook",
    "EMAHook",
    "EvalHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "StopOnSignal",
    "flatten_results",
]

HOOK_REGISTRY = Registry(
    "HOOK",
    doc="Training hooks named in cfg.HOOKS. Signature: fn(cfg, trainer) -> HookBase. "
    "They run after the built-in state hooks and before the checkpointer and writers.",
)

logger = logging.getLogger("retinakit.trainer")


class CallbackHook(HookBase):
    """A hook made of plain functions ``fn(trainer)`` (handy for quick additions)."""

    def __init__(self, **fns: Callable[[Any], None]) -> None:
        allowed = {"before_train", "after_train", "before_step", "after_backward", "after_step"}
        unknown = set(fns) - allowed
        if unknown:
            raise TypeError(f"CallbackHook: unknown callbacks {sorted(unknown)}; allowed: {sorted(allowed)}")
        self._fns = fns

    def _call(self, name: str) -> None:
        if name in self._fns:
            self._fns[name](self.trainer)

    def before_train(self) -> None:
        self._call("before_train")

    def after_train(self) -> None:
        self._call("after_train")

    def before_step(self) -> None:
        self._call("before_step")

    def after_backward(self) -> None:
        self._call("after_backward")

    def after_step(self) -> None:
        self._call("after_step")


class IterationTimer(HookBase):
    """Logs ``time`` (seconds per iteration, hooks excluded) and the total training time."""

    def __init__(self) -> None:
        self._step_start = 0.0
        self._train_start = 0.0
        self._steps = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._steps = 0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._step_start)
        self._steps += 1

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        n = self._steps  # completed steps, also when a later hook stopped training (StopOnSignal) or a step failed
        if n > 0:
            logger.info(f"Trained {n} iterations in {total:.1f}s ({total / n:.4f} s/it including hooks)")


class LRScheduler(HookBase):
    """Steps the LR scheduler after each optimizer step (its state is checkpointed separately)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` iterations and ``model_final`` at the end.

    ``max_to_keep`` > 0 deletes older periodic checkpoints (never model_final/model_best).
    ``on_write_error``: ``"stop"`` lets a :class:`CheckpointWriteError` end training; ``"retry"``
    logs it and keeps training (the next period writes again; ``model_final`` always raises).
    The saved ``iteration`` is the iteration just completed; resume starts after it.
    """

    def __init__(
        self, checkpointer: Checkpointer, period: int, max_iter: int, max_to_keep: int = 0, on_write_error: str = "stop",
    ) -> None:
        if on_write_error not in ("stop", "retry"):
            from ..config import ConfigError

            raise ConfigError(f"SOLVER.CHECKPOINT_WRITE_ERROR must be 'stop' or 'retry', got {on_write_error!r}.")
        self.checkpointer = checkpointer
        self.period = period
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.on_write_error = on_write_error
        self._kept: list[str] = []
        self.last_saved_iter = -1  # the iteration of the newest checkpoint this hook wrote

    def after_step(self) -> None:
        it = self.trainer.iter
        if it + 1 >= self.max_iter:
            self.checkpointer.save("model_final", iteration=it)
            self.last_saved_iter = it
            return
        if self.period > 0 and (it + 1) % self.period == 0:
            try:
                path = self.checkpointer.save(f"model_{it:07d}", iteration=it)
            except CheckpointWriteError as e:
                if self.on_write_error == "stop":
                    raise
                logger.warning(f"{e} (SOLVER.CHECKPOINT_WRITE_ERROR retry: training goes on, the next period tries again)")
                return
            self.last_saved_iter = it
            if path:
                self._kept.append(path)
            self._prune()

    def _prune(self) -> None:
        if self.max_to_keep <= 0 or not self.checkpointer.save_to_disk:
            return
        files = [p for p in self.checkpointer.get_all_checkpoint_files() if os.path.basename(p).startswith("model_0")]
        last = self.checkpointer.get_checkpoint_file()
        for p in files[self.max_to_keep :]:
            if p != last and os.path.exists(p):
                os.remove(p)


class StopOnSignal(HookBase):
    """On SIGTERM/SIGINT: finish the current iteration, save a checkpoint of it, stop training.

    The first signal only sets a flag (so a pre-emption notice or Ctrl-C never leaves a
    half-done step); after the iteration every rank agrees on it (one all-reduce of a flag per
    iteration in a distributed run, so all ranks stop at the same iteration even when the signal
    reached only one of them), the checkpoint ``model_{iter:07d}`` is written unless
    ``periodic`` just wrote one, a single log line names the file to resume from, and
    :class:`TrainingInterrupted` is raised. A second signal before that ends the process at
    once (default action of the signal). Handlers are installed for the duration of training,
    in the main thread only (elsewhere the hook does nothing), and the previous ones restored.
    The checkpoint holds exactly what a periodic one at that iteration would hold, so a
    resume continues bitwise. Register it after every hook that changes state.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer: Checkpointer, periodic: PeriodicCheckpointer | None = None) -> None:
        self.checkpointer = checkpointer
        self.periodic = periodic
        self.received = 0  # the signal number received (0: none)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received:  # the second signal: exit now, the default way
            self._restore()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signum
        logger.warning(f"Received {signal.Signals(signum).name}: stopping after this iteration with a checkpoint "
                       "(send it again to exit at once).")

    def before_train(self) -> None:
        self.received = 0
        if threading.current_thread() is not threading.main_thread():
            logger.info("Training runs outside the main thread: SIGTERM/SIGINT are not handled by the trainer.")
            return
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handler)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def after_train(self) -> None:
        self._restore()

    def after_step(self) -> None:
        signum = comm.max_over_processes(self.received)  # CPU all-reduce: also under NCCL
        it = self.trainer.iter
        if not signum or it + 1 >= self.trainer.max_iter:  # the last iteration: training ends anyway
            return
        if self.periodic is not None and self.periodic.last_saved_iter == it:
            path = self.checkpointer.get_checkpoint_file()
        else:
            path = self.checkpointer.save(f"model_{it:07d}", iteration=it) or ""
        name = signal.Signals(signum).name
        where = os.path.abspath(self.checkpointer.save_dir) if self.checkpointer.save_dir else "(no OUTPUT_DIR)"
        msg = (f"Stopped by {name} after iteration {it}: checkpoint {path or 'written by the main process'} is complete; "
               f"rerun the same command with --resume (OUTPUT_DIR {where}) to continue from iteration {it + 1}.")
        if comm.is_main_process():
            logger.warning(msg)
        raise TrainingInterrupted(msg, signum, it, path)


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Evaluation must not change the training RNG streams (exact resume depends on it)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"bbox": {"AP": 1}}`` -> ``{"bbox/AP": 1.0}`` (non-numbers are dropped)."""
    out: dict[str, float] = {}
    for k, v in results.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_results(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class EvalHook(HookBase):
    """Runs ``eval_function() -> dict`` every ``period`` iterations and after training.

    Results are flattened (``bbox/AP``) into the event storage, so writers log them and
    :class:`BestCheckpointer` can read them. RNG states are preserved around evaluation.
    """

    def __init__(self, period: int, eval_function: Callable[[], Mapping[str, Any]]) -> None:
        self.period = period
        self.eval_function = eval_function
        self.last_results: dict[str, float] = {}

    def _do_eval(self) -> None:
        with _preserved_rng():
            results = self.eval_function() or {}
        # Results exist on the main process only; share them so that every rank logs the
        # same values and hooks reading them (BestCheckpointer) act together.
        results = comm.all_gather(results)[0]
        flat = flatten_results(results)
        self.last_results = flat
        if flat:
            self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
        comm.synchronize()

    def after_step(self) -> None:
        nxt = self.trainer.iter + 1
        if self.period > 0 and nxt % self.period == 0 and nxt != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Only a training that ran to the end is evaluated (not one stopped by an error).
        if self.trainer.completed and self.trainer.iter > self.trainer.start_iter:
            self._do_eval()


class BestCheckpointer(HookBase):
    """Saves ``model_best`` when the metric ``metric`` (e.g. ``bbox/AP``) improves.

    Must run after :class:`EvalHook`. Its best value is part of the hook state.
    """

    def __init__(self, checkpointer: Checkpointer, metric: str = "bbox/AP", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}")
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.best_iter = -1
        self._seen_iter = -1

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _check(self, it: int, completed: int) -> None:
        """Save when the metric logged at storage iteration ``it`` is a new best; the checkpoint
        records ``completed``, the last completed iteration (a resume starts after it)."""
        latest = self.trainer.storage.latest().get(self.metric)
        if latest is None:
            return
        value, logged_at = latest
        if logged_at != it or logged_at == self._seen_iter or not math.isfinite(value):
            return
        self._seen_iter = logged_at
        if self._better(value):
            self.best, self.best_iter = value, completed
            logger.info(f"New best {self.metric} = {value:.4f} at iteration {completed}; saving model_best")
            self.checkpointer.save("model_best", iteration=completed, best_metric=value)

    def after_step(self) -> None:
        self._check(self.trainer.iter, self.trainer.iter)

    def after_train(self) -> None:
        # The final evaluation is logged at max_iter, but the last completed iteration is
        # max_iter - 1: model_best (which becomes last_checkpoint) must say so, or a resume
        # with a longer schedule would skip an iteration.
        if self.trainer.completed:
            self._check(self.trainer.iter, self.trainer.iter - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_iter": self.best_iter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.best_iter = int(state.get("best_iter", -1))


class PeriodicWriter(HookBase):
    """Calls each writer every ``period`` iterations, at the last iteration and at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self.writers = list(writers)
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            for w in self.writers:
                w.write()

    def after_train(self) -> None:
        for w in self.writers:
            # Also write the final evaluation results; then close.
            w.write()
            w.close()


class EMAHook(HookBase):
    """Exponential moving average of the model's floating-point parameters and buffers.

    ``ema = decay * ema + (1 - decay) * weight`` after every step, with the decay warmed up
    as ``min(decay, (1 + n) / (10 + n))``. :meth:`apply` swaps the EMA weights into the
    model temporarily (the evaluation hook uses it). The EMA is part of the hook state.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.model = model.module if hasattr(model, "module") else model
        self.decay = decay
        self.updates = 0
        self.ema = {k: v.detach().clone() for k, v in self._tracked().items()}

    def _tracked(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self._tracked().items():
            self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)

    @contextmanager
    def apply(self) -> Iterator[None]:
        backup = {k: v.detach().clone() for k, v in self._tracked().items()}
        self.model.load_state_dict(self.ema, strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(backup, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "ema": copy.copy(self.ema)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])
        for k, v in state["ema"].items():
            if k in self.ema:
                self.ema[k].copy_(v)
