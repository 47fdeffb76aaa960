"""Checkpointer: atomic saves, exact resume, fallback past a corrupt newest checkpoint.

A checkpoint is a dict of tensors and plain containers (it loads with
``torch.load(weights_only=True)``)::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "trainer": {...},
     "iteration": int, "rng": [per-rank RNG states], ...extra}

Files: ``OUTPUT_DIR/model_{iter:07d}.pth``, ``model_final.pth`` and ``last_checkpoint``
(a text file naming the newest complete checkpoint, rewritten only after it is on disk).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config.config import CfgNode
from ..utils import comm
from ..utils.errors import UserInputError

__all__ = ["CheckpointWriteError", "Checkpointer", "atomic_torch_save", "get_rng_state", "load_checkpoint_file", "set_rng_state"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_ITER_RE = re.compile(r"model_(\d+)\.pth$")


class CheckpointWriteError(OSError, UserInputError):
    """A checkpoint could not be written (disk full, I/O error, read-only folder).

    The message is one line naming the folder, the free space and what the checkpoint needs;
    the partial file is removed and ``last_checkpoint`` still names the previous checkpoint.
    """


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts/lists): about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def write_error_message(e: OSError, path: str, needed: int, latest: str) -> str:
    """One line: what failed where, free space there vs. needed, what is intact, what to do."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = _human(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    reason = os.strerror(e.errno) if e.errno else str(e)
    code = f" [{errno.errorcode.get(e.errno, e.errno)}]" if e.errno else ""
    kept = f"{os.path.basename(latest)} is still the latest checkpoint" if latest else "no earlier checkpoint exists"
    return (
        f"Cannot write checkpoint {os.path.basename(path)} in {folder}: {reason}{code}; free space there: {free}, "
        f"the checkpoint needs about {_human(needed)}. The partial file was removed and {kept}: "
        "free space (or make the folder writable) and rerun with --resume."
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


# ---------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and every CUDA device (once CUDA is in use),
    as tensors and numbers."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached": float(np_cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per device of the saving process; a machine with fewer devices restores
        # those it has (each process of a DDP run uses only its own device).
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# ---------------------------------------------------------------------------- file I/O
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, writer: Any) -> None:
    """Write through ``writer(fileobj)`` to a temp file, flush, fsync, rename onto ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):  # never hide the write error behind a removal error
                os.remove(tmp)
    _fsync_dir(d)


def atomic_torch_save(obj: Any, path: str) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def _local_path(path: str) -> str:
    """A local file for ``path`` (URLs are downloaded and cached through iopath)."""
    if "://" not in path:
        return path
    from iopath.common.file_io import HTTPURLHandler, PathManager

    pm = PathManager()
    pm.register_handler(HTTPURLHandler())
    return pm.get_local_path(path)


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Load a ``.pth`` (``weights_only=True``), ``.safetensors`` or detectron2 ``.pkl`` file onto the CPU.

    A ``.safetensors`` file gives ``{"model": state_dict}`` (and ``"__retinakit__"`` when it
    recorded one); without the ``safetensors`` package it raises ``MissingSafetensorsError``.
    """
    local = _local_path(path)
    if local.endswith(".safetensors"):  # model weights only; see weights_file.py
        from .weights_file import load_safetensors

        return load_safetensors(local, source=path)
    if local.endswith(".pkl"):  # detectron2 model zoo: numpy arrays only, read without running code
        from .converters.detectron2 import load_pkl

        return load_pkl(local)
    obj = torch.load(local, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict of tensors (got {type(obj).__name__}).")
    return obj


# ---------------------------------------------------------------------------- Checkpointer
class Checkpointer:
    """Saves and loads the model plus ``checkpointables`` (objects with ``state_dict``).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: where checkpoints live.
        save_to_disk: whether this process writes files (rank 0 by default).
        cfg: the config ``model`` was built from; loaded weights converted from another project
            are checked against it (without it such weights are refused, see ``load_model_weights``).
        checkpointables: e.g. ``optimizer=..., scheduler=..., trainer=...``.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        cfg: CfgNode | None = None,
        **checkpointables: Any,
    ) -> None:
        self.model = _unwrap(model)
        self.save_dir = save_dir
        self.cfg = cfg
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables = checkpointables
        self._last_size = 0  # bytes of the tensors of the last checkpoint prepared (for error messages)

    # -- save ------------------------------------------------------------------------
    def save(self, name: str, **extra: Any) -> str | None:
        """Write ``save_dir/name.pth`` atomically and point ``last_checkpoint`` to it.

        In a distributed run every rank must call it (RNG states are gathered from all ranks).
        A failed write (disk full, I/O error, read-only folder) removes the partial file, leaves
        ``last_checkpoint`` on the previous checkpoint and raises :class:`CheckpointWriteError`
        on every rank (one line naming the folder and the free space).
        """
        rng = comm.all_gather(get_rng_state())
        path, error = None, ""
        if self.save_to_disk and self.save_dir:
            try:
                path = self._write(name, rng, extra)
            except OSError as e:
                error = write_error_message(e, os.path.join(self.save_dir, f"{name}.pth"), self._last_size, self.get_checkpoint_file())
        if comm.get_world_size() > 1:  # every rank learns of the writer's failure (none waits in a collective)
            error = next((m for m in comm.all_gather(error) if m), "")
        if error:
            raise CheckpointWriteError(error)
        return path

    def _write(self, name: str, rng: list[Any], extra: Mapping[str, Any]) -> str:
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["rng"] = rng
        data.update(extra)
        self._last_size = _nbytes(data)
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, f"{name}.pth")
        atomic_torch_save(data, path)
        # Only now that the checkpoint is complete on disk does last_checkpoint move.
        atomic_write_bytes(os.path.join(self.save_dir, LAST_CHECKPOINT), lambda f: f.write(os.path.basename(path).encode()))
        self._remove_stale_temp_files(path)
        logger.info(f"Saved checkpoint {path}")
        return path

    @staticmethod
    def _remove_stale_temp_files(path: str) -> None:
        """Delete temp files of ``path`` left by killed processes (it is complete now)."""
        d, base = os.path.split(path)
        for tmp in glob.glob(os.path.join(glob.escape(d), f".{glob.escape(base)}.tmp.*")):
            with contextlib.suppress(OSError):
                os.remove(tmp)

    # -- discovery -------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return bool(self.get_all_checkpoint_files())

    def get_checkpoint_file(self) -> str:
        """The file named in ``last_checkpoint`` ('' if none)."""
        p = os.path.join(self.save_dir, LAST_CHECKPOINT)
        try:
            with open(p, encoding="utf-8") as f:
                return os.path.join(self.save_dir, f.read().strip())
        except OSError:
            return ""

    def get_all_checkpoint_files(self) -> list[str]:
        """Checkpoints of ``save_dir``, newest first: last_checkpoint's, then by iteration."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        files = []
        for name in os.listdir(self.save_dir):
            m = _ITER_RE.match(name)
            if m:
                files.append((int(m.group(1)), os.path.join(self.save_dir, name)))
            elif name == "model_final.pth":
                files.append((1 << 60, os.path.join(self.save_dir, name)))
        ordered = [p for _, p in sorted(files, reverse=True)]
        last = self.get_checkpoint_file()
        if last and os.path.exists(last):
            ordered = [last] + [p for p in ordered if p != last]
        return ordered

    # -- load ------------------------------------------------------------------------
    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load ``path``: the model, then the named checkpointables (all by default).

        Returns what is left of the checkpoint (e.g. ``iteration``).
        """
        logger.info(f"Loading checkpoint from {path}")
        ckpt = load_checkpoint_file(path)
        return self._restore(ckpt, path, checkpointables)

    def _restore(self, ckpt: dict[str, Any], path: str, checkpointables: list[str] | None) -> dict[str, Any]:
        state = ckpt.pop("model", None)
        if state is None:
            state = ckpt  # a bare state_dict
            ckpt = {}
        info = ckpt.pop("__retinakit__", None)  # what converted weights need from the config
        self._load_model(state, path, info)
        names = self.checkpointables.keys() if checkpointables is None else checkpointables
        for key in names:
            if key in ckpt:
                self.checkpointables[key].load_state_dict(ckpt.pop(key))
        if checkpointables is not None:
            ckpt.pop("rng", None)
        return ckpt

    @staticmethod
    def restore_rng(extra: Mapping[str, Any]) -> bool:
        """Restore this rank's RNG states from what :meth:`resume_or_load` returned.

        Kept separate so the caller can first build things that draw random numbers
        (e.g. a data loader iterator) and then put the RNG exactly where the saved run was.
        """
        rng = extra.get("rng")
        if not rng:
            return False
        rank = comm.get_rank()
        set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        return True

    def _load_model(self, state: Mapping[str, Any], source: str, info: Mapping[str, Any] | None = None) -> None:
        """Load model weights through ``load_model_weights`` (converts torchvision/ImageNet
        weights, names mismatching keys/shapes, skips class-count-specific head layers, checks
        converted weights' requirements ``info`` against ``self.cfg``)."""
        from .model_loading import load_model_weights

        checkpoint: dict[str, Any] = {"model": dict(state)}
        if info is not None:
            checkpoint["__retinakit__"] = info
        load_model_weights(self.model, checkpoint, source, cfg=self.cfg)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """With ``resume`` and a checkpoint in save_dir: restore everything from the newest
        loadable one (falling back past corrupt files, with a warning). Otherwise load only
        the model weights from ``path`` (if given). Returns the rest of the checkpoint
        (``iteration``, ``rng``: pass it to :meth:`restore_rng`)."""
        if resume and self.has_checkpoint():
            return self._resume_newest()
        if path:
            return self.load(path, checkpointables=[])
        return {}

    def _resume_newest(self) -> dict[str, Any]:
        errors = []
        for p in self.get_all_checkpoint_files():
            try:
                ckpt = load_checkpoint_file(p)
            except Exception as e:  # noqa: BLE001 - a truncated/corrupt file: try the previous checkpoint
                logger.warning(f"Checkpoint {p} cannot be read ({type(e).__name__}: {e}); trying an older one.")
                errors.append(p)
                continue
            if errors:
                logger.warning(f"Resuming from {p} instead of the unreadable {errors}.")
            logger.info(f"Resuming from {p}")
            return self._restore(ckpt, p, None)
        raise RuntimeError(f"No readable checkpoint in {self.save_dir}: every candidate failed: {errors}")
