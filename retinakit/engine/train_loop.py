"""The training loop: ``HookBase``, ``TrainerBase``, ``SimpleTrainer`` and ``AMPTrainer``.

One *iteration* is one optimizer step. With gradient accumulation it consumes
``accumulate_steps`` batches from the loader, so the effective batch of an iteration
is ``batch per loader * accumulate_steps * world size``.
"""
from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..utils import comm
from ..utils.events import EventStorage, HistoryBuffer, get_event_storage

__all__ = ["AMPTrainer", "HookBase", "NonFiniteLossError", "SimpleTrainer", "TrainerBase", "TrainingInterrupted"]

logger = logging.getLogger("retinakit.trainer")

# Scalars of each metric kept in checkpoints: the writers' smoothing windows (20) and the
# ETA estimate read the recent history, so a resumed run logs what an uninterrupted one would.
HISTORY_KEPT = 1000


def history_state(storage: EventStorage) -> dict[str, dict[str, Any]]:
    """The recent scalar history of ``storage`` as tensors: ``{name: {values [L] float64,
    iters [L] int64, total, count}}`` (L <= HISTORY_KEPT)."""
    out: dict[str, dict[str, Any]] = {}
    for name, h in storage.histories().items():
        recent = h.values[-HISTORY_KEPT:]
        out[name] = {
            "values": torch.tensor([v for v, _ in recent], dtype=torch.float64),
            "iters": torch.tensor([i for _, i in recent], dtype=torch.int64),
            "total": float(h.total),
            "count": int(h.count),
        }
    return out


def load_history_state(storage: EventStorage, state: Mapping[str, Mapping[str, Any]]) -> None:
    """Put what :func:`history_state` returned back into a fresh ``storage``."""
    histories = storage.histories()
    for name, s in state.items():
        h = HistoryBuffer()
        h.values = [(float(v), int(i)) for v, i in zip(s["values"].tolist(), s["iters"].tolist())]
        h.total, h.count = float(s["total"]), int(s["count"])
        histories[name] = h


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/Inf. The message names the iteration, the losses and the image ids."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGTERM, SIGINT) after writing a checkpoint.

    Attributes: ``signum`` (the signal number), ``iteration`` (the last completed iteration),
    ``checkpoint`` (the file a resume starts from; '' on processes that do not write files).
    """

    def __init__(self, message: str, signum: int, iteration: int, checkpoint: str = "") -> None:
        super().__init__(message)
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


class HookBase:
    """A callback of the training loop. Override any of the methods below.

    Each hook has ``self.trainer`` (a weak proxy of the trainer) once registered.
    ``state_dict``/``load_state_dict`` carry hook state (counters, best metric, EMA
    weights...) into checkpoints; keep it to tensors and plain Python containers.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, also when training stops with an error."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass(es) of an iteration, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration (after the optimizer step)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class TrainerBase:
    """Runs ``run_step`` from ``start_iter`` to ``max_iter`` calling the hooks around it.

    Attributes: ``iter`` (current iteration), ``start_iter``, ``max_iter``, ``storage``
    (the :class:`EventStorage`), ``completed`` (True once every iteration ran).
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.completed = False
        self.storage: EventStorage
        self._saved_history: Mapping[str, Any] = {}

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Append hooks; they are called in the order of registration."""
        for h in hooks:
            if h is None:
                continue
            assert isinstance(h, HookBase), f"{h!r} is not a HookBase"
            # A weak proxy avoids a reference cycle trainer <-> hook.
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    @property
    def hooks(self) -> list[HookBase]:
        return list(self._hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info(f"Starting training from iteration {start_iter} to {max_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.completed = False
        with EventStorage(start_iter) as self.storage:
            load_history_state(self.storage, self._saved_history)
            self._saved_history = {}
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # After the loop ``iter`` points one past the last iteration, as if the
                # loop had exited normally (also when start_iter == max_iter).
                self.iter = max_iter
                self.completed = True
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def _hook_keys(self) -> list[str]:
        keys, seen = [], {}
        for h in self._hooks:
            name = type(h).__qualname__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}.{seen[name] - 1}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        hooks = {}
        for key, h in zip(self._hook_keys(), self._hooks):
            s = h.state_dict()
            if s:
                hooks[key] = s
        storage = getattr(self, "storage", None)
        history = history_state(storage) if storage is not None else {}
        return {"iteration": self.iter, "hooks": hooks, "history": history}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the iteration and hook states; the scalar history goes into the event
        storage of the next :meth:`train`."""
        self.iter = int(state["iteration"])
        self._saved_history = state.get("history", {})
        saved = dict(state.get("hooks", {}))
        for key, h in zip(self._hook_keys(), self._hooks):
            if key in saved:
                h.load_state_dict(saved.pop(key))
        if saved:
            logger.warning(f"Checkpoint has state for hooks that are not registered now: {sorted(saved)}")


def _image_ids(batch: Any) -> list[Any]:
    if isinstance(batch, (list, tuple)):
        return [d.get("image_id", d.get("file_name")) for d in batch if isinstance(d, dict)]
    return []


class SimpleTrainer(TrainerBase):
    """Forward, backward and optimizer step on batches from an (infinite) data loader.

    Args:
        model: returns a dict of scalar losses in training mode.
        data_loader: an iterable yielding batches (``list[dict]`` for retinakit models).
        optimizer: a torch optimizer.
        accumulate_steps: batches whose gradients are summed (each loss / N) per step.
        clip_grad: ``None`` or ``("norm"|"value", max_value, norm_type)``.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        accumulate_steps: int = 1,
        clip_grad: tuple | None = None,
    ) -> None:
        super().__init__()
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_iter: Any | None = None
        self.optimizer = optimizer
        self.accumulate_steps = accumulate_steps
        self.clip_grad = clip_grad

    @property
    def data_iter(self) -> Any:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return self._data_iter

    def reset_data_loader(self, data_loader: Iterable[Any]) -> None:
        """Replace the loader (e.g. by one that starts at the resumed iteration)."""
        self.data_loader, self._data_iter = data_loader, None

    # -- pieces that AMPTrainer overrides ---------------------------------------------
    def _autocast(self) -> Any:
        return nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _unscale(self) -> None:
        pass

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    # -----------------------------------------------------------------------------------
    def run_step(self) -> None:
        assert self.model.training, "SimpleTrainer: the model was switched to eval mode."
        t0 = time.perf_counter()
        n = self.accumulate_steps
        batches = [next(self.data_iter) for _ in range(n)]
        data_time = time.perf_counter() - t0

        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            # DDP: synchronise gradients only on the last micro-batch.
            sync = i == n - 1 or not hasattr(self.model, "no_sync")
            with (nullcontext() if sync else self.model.no_sync()):
                with self._autocast():
                    loss_dict = self.model(batch)
                loss_dict = {k: v.float() for k, v in loss_dict.items()}
                self._check_finite(loss_dict, batch)
                self._backward(sum(loss_dict.values()) / n)
            for k, v in loss_dict.items():
                totals[k] = totals.get(k, 0.0) + v.detach() / n
        self.after_backward()
        self._clip_gradients()
        self._optimizer_step()
        self._write_metrics(totals, data_time)

    def _check_finite(self, loss_dict: dict[str, torch.Tensor], batch: Any) -> None:
        """Raise NonFiniteLossError on every rank if any rank's loss is NaN/Inf (before backward,
        so no rank is left waiting in DDP's gradient all-reduce)."""
        total = sum(loss_dict.values())
        finite = torch.isfinite(total.detach()).to(torch.int32).reshape(1)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if bool(finite.item()):
            return
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        local = "non-finite here" if not bool(torch.isfinite(total)) else "finite here; non-finite on another rank"
        raise NonFiniteLossError(
            f"Loss became non-finite at iteration {self.iter}: {values} ({local}). "
            f"Image ids of the batch (rank {comm.get_rank()}): {_image_ids(batch)}. "
            "Training stopped; the last checkpoint written before this iteration is intact. "
            "Check these images' boxes, or lower SOLVER.BASE_LR / raise SOLVER.WARMUP_ITERS."
        )

    def _clip_gradients(self) -> None:
        if not self.clip_grad:
            return
        kind, value, norm_type = self.clip_grad
        self._unscale()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if kind == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value, norm_type=norm_type)

    def _write_metrics(self, loss_dict: dict[str, torch.Tensor], data_time: float) -> None:
        reduced = comm.reduce_dict(loss_dict)
        storage = get_event_storage()
        storage.put_scalar("data_time", data_time)
        vals = {k: float(v) for k, v in reduced.items()}
        storage.put_scalar("total_loss", sum(vals.values()))
        storage.put_scalars(**vals)
        storage.put_scalar("lr", self.optimizer.param_groups[0]["lr"], smoothing_hint=False)



class AMPTrainer(SimpleTrainer):
    """SimpleTrainer with automatic mixed precision.

    ``dtype=torch.float16`` uses a ``GradScaler`` (dynamic loss scaling);
    ``dtype=torch.bfloat16`` needs none. The autocast device type is the model's.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        dtype: torch.dtype = torch.float16,
        grad_scaler: Any | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, data_loader, optimizer, **kwargs)
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMP dtype must be float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.device_type = next(model.parameters()).device.type
        if grad_scaler is None and dtype == torch.float16:
            grad_scaler = torch.amp.GradScaler(self.device_type)
        self.grad_scaler = grad_scaler
        self._unscaled = False

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def _backward(self, loss: torch.Tensor) -> None:
        self._unscaled = False
        (self.grad_scaler.scale(loss) if self.grad_scaler else loss).backward()

    def _unscale(self) -> None:
        if self.grad_scaler and not self._unscaled:
            self.grad_scaler.unscale_(self.optimizer)
            self._unscaled = True

    def _optimizer_step(self) -> None:
        if self.grad_scaler is None:
            self.optimizer.step()
            return
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
