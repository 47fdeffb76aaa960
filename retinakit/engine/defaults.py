"""Defaults for the common case: argument parser, set-up, ``DefaultTrainer``, ``DefaultPredictor``.

``DefaultTrainer`` builds model, optimizer, LR schedule, data loader, checkpointer and the
default hooks from a config::

    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..checkpoint import Checkpointer
from ..checkpoint.checkpointer import atomic_write_bytes
from ..config import CfgNode, ConfigError
from ..utils import comm
from ..utils.env import collect_env_info, seed_all_rng
from ..utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardWriter,
)
from ..utils.logger import setup_logger
from . import hooks
from .solver import build_lr_scheduler, build_optimizer
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = ["DefaultPredictor", "DefaultTrainer", "default_argument_parser", "default_setup", "default_writers"]

logger = logging.getLogger("retinakit.trainer")


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """``--config-file --resume --eval-only --watch --num-gpus --num-machines --machine-rank
    --dist-url`` and trailing ``KEY VALUE`` config overrides."""
    p = argparse.ArgumentParser(
        epilog=epilog
        or "Examples:\n  python tools/train_net.py --config-file configs/quickstart/retinanet_R10_shapes.yaml\n"
        "  python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16\n"
        "  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of OUTPUT_DIR")
    p.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS (or the last checkpoint)")
    p.add_argument("--watch", action="store_true", help="with --eval-only: evaluate each new checkpoint of OUTPUT_DIR")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (CPU processes without CUDA)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 for the first)")
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 ('auto': a free local port)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    return p


def default_setup(cfg: Any, args: argparse.Namespace | None = None) -> None:
    """Output dir, logging to ``log.txt``, environment summary, config dump, seeds, cudnn.

    A negative ``SEED`` is replaced by a drawn seed, written into ``cfg`` (it must not be
    frozen) so the dumped config reproduces the run. Each rank seeds with ``SEED + rank``.
    """
    out = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    error = ""
    if comm.is_main_process() and out:
        try:
            prepare_output_dir(out)
        except ConfigError as e:
            error = str(e)
    error = next((m for m in comm.all_gather(error) if m), "")  # every rank stops, none waits
    if error:
        raise ConfigError(error)
    setup_logger(out or None, distributed_rank=rank, name="retinakit")
    logger.info(f"Rank {rank} of {comm.get_world_size()} processes")
    logger.info("Environment:\n" + collect_env_info())
    if args is not None:
        logger.info(f"Command line arguments: {vars(args)}")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.all_gather(seed_all_rng(None))[0]
    if cfg.SEED != seed:
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = seed
        if frozen:
            cfg.freeze()
    seed_all_rng(seed + rank)
    logger.info(f"Seed {seed} (+ rank)")
    if comm.is_main_process() and out:
        path = os.path.join(out, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


def prepare_output_dir(out: str) -> None:
    """Create ``out`` (OUTPUT_DIR) if needed; ``ConfigError`` (one line) when it is a file,
    cannot be created, or is not writable."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"OUTPUT_DIR {out!r} is an existing file, not a folder: set OUTPUT_DIR to a folder (it is created if missing).")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"OUTPUT_DIR {out!r} cannot be created ({e.strerror or e}): set OUTPUT_DIR to a folder you can write to."
        ) from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"OUTPUT_DIR {out!r} is not writable: set OUTPUT_DIR to a folder you can write to, or fix its permissions.")


def default_writers(output_dir: str, max_iter: int, ims_per_batch: int | None = None) -> list[EventWriter]:
    """Console line, ``metrics.json`` and TensorBoard events under ``output_dir``."""
    writers: list[EventWriter] = [
        CommonMetricPrinter(max_iter, ims_per_batch),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
    ]
    try:
        writers.append(TensorboardWriter(output_dir))
    except ImportError as e:  # the tensorboard package is missing: everything else still works
        logger.warning(f"TensorBoard events are not written ({e}); pip install tensorboard to get them.")
    return writers


def _truncate_metrics(path: str, start_iter: int) -> None:
    """On resume, drop rows of iterations the resumed run will redo (written after the checkpoint)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if row.get("iteration", -1) < start_iter:
                keep.append(json.dumps(row, sort_keys=True))
    text = "".join(k + "\n" for k in keep).encode("utf-8")
    try:  # temp file + rename: a full disk leaves the old file whole, never a truncated one
        atomic_write_bytes(path, lambda f: f.write(text))
    except OSError as e:
        logger.warning(f"Could not rewrite {path} for the resume ({e.strerror or e}); it keeps rows of iterations that are redone.")


def fast_forward(loader: Any, n: int) -> Iterator[Any]:
    """An iterator over ``loader`` with its first ``n`` batches consumed."""
    it = iter(loader)
    if n:
        logger.info(f"Resuming: skipping {n} batches of the data stream to reach the saved position")
    for _ in range(n):
        next(it)
    return it


def _accepts(func: Any, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class _ForwardAfterBackward(HookBase):
    """Registered on the step trainer that ``DefaultTrainer`` wraps: the step trainer fires
    ``after_backward`` inside its ``run_step``; this hands it on to the DefaultTrainer's hooks."""

    def __init__(self, outer: TrainerBase) -> None:
        self._outer = weakref.proxy(outer)

    def after_backward(self) -> None:
        self._outer.after_backward()


class DefaultTrainer(TrainerBase):
    """A trainer with the standard set-up and hooks, built from a config.

    Override the ``build_*`` class methods to customise; add hooks with
    :meth:`register_hooks` (in Python) or by name in ``cfg.HOOKS`` (``HOOK_REGISTRY``).
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        model = self.build_model(cfg)
        if cfg.SOLVER.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        optimizer = self.build_optimizer(cfg, model)
        model = self._wrap_ddp(model)
        self.model = model
        self._trainer = self._build_step_trainer(cfg, model, optimizer)
        self._trainer.register_hooks([_ForwardAfterBackward(self)])
        self.optimizer = optimizer
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, optimizer=optimizer, scheduler=self.scheduler, trainer=self
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._resume_extra: dict[str, Any] = {}
        self._ema: hooks.EMAHook | None = None
        self.register_hooks(self.build_hooks())

    # -- construction ----------------------------------------------------------------
    @staticmethod
    def _wrap_ddp(model: nn.Module) -> nn.Module:
        if comm.get_world_size() == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _build_step_trainer(self, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> SimpleTrainer:
        clip = cfg.SOLVER.CLIP_GRADIENTS
        kwargs = dict(
            accumulate_steps=cfg.SOLVER.ACCUMULATE_STEPS,
            clip_grad=(clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) if clip.ENABLED else None,
        )
        if cfg.SOLVER.AMP.ENABLED:
            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.SOLVER.AMP.DTYPE)
            if dtype is None:
                from ..config import ConfigError

                raise ConfigError(f"SOLVER.AMP.DTYPE must be 'float16' or 'bfloat16', got {cfg.SOLVER.AMP.DTYPE!r}.")
            return AMPTrainer(model, [], optimizer, dtype=dtype, **kwargs)
        return SimpleTrainer(model, [], optimizer, **kwargs)

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        from ..modeling import build_model

        model = build_model(cfg)
        n = sum(p.numel() for p in model.parameters())
        logger.info(f"Model {cfg.MODEL.META_ARCHITECTURE}: {n / 1e6:.2f}M parameters")
        return model

    @classmethod
    def build_optimizer(cls, cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: Any, start_iter: int = 0) -> Any:
        """The training stream positioned at iteration ``start_iter``; per-process
        micro-batch = IMS_PER_BATCH / (world * ACCUMULATE_STEPS).

        If the data layer's builder accepts ``start_iter`` it is passed; otherwise the
        stream is fast-forwarded here (every skipped batch is loaded: exact, but slow for
        a resume late in a long training).
        """
        from ..data import build_detection_train_loader

        accum = cfg.SOLVER.ACCUMULATE_STEPS
        total = cfg.SOLVER.IMS_PER_BATCH
        if total % (accum * comm.get_world_size()):
            from ..config import ConfigError

            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by SOLVER.ACCUMULATE_STEPS ({accum}) "
                f"x the number of processes ({comm.get_world_size()})."
            )
        loader_cfg = cfg.clone()
        loader_cfg.defrost()
        loader_cfg.SOLVER.IMS_PER_BATCH = total // accum
        if _accepts(build_detection_train_loader, "start_iter"):
            return build_detection_train_loader(loader_cfg, start_iter=start_iter * accum)
        return fast_forward(build_detection_train_loader(loader_cfg), start_iter * accum)

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Any:
        from ..data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name, batch_size=cfg.TEST.IMS_PER_BATCH)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None) -> Any:
        from ..evaluation import COCOEvaluator

        out = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name, out, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, use_fast_impl=cfg.TEST.FAST_COCO_EVAL,
            **_recall_settings(cfg),
        )

    @classmethod
    def test_dataset_names(cls, cfg: Any) -> list[str]:
        from ..data import get_eval_dataset_names

        return get_eval_dataset_names(cfg)

    @classmethod
    def test(cls, cfg: Any, model: nn.Module, evaluators: list[Any] | None = None) -> dict[str, Any]:
        """Evaluate ``model`` on every test dataset; returns ``{dataset: {task: metrics}}``
        (a single dataset's results directly)."""
        from ..evaluation import inference_on_dataset

        names = cls.test_dataset_names(cfg)
        results: dict[str, Any] = {}
        for i, name in enumerate(names):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[i] if evaluators else cls.build_evaluator(cfg, name)
            res = inference_on_dataset(model, loader, evaluator)
            results[name] = res
            if comm.is_main_process() and res:
                _log_results(name, res)
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    def build_hooks(self) -> list[hooks.HookBase]:
        """Default hooks, in this order (the order matters):

        1. IterationTimer: first, so its before_step starts the clock before other hooks.
        2. LRScheduler: steps the schedule right after the optimizer step, so every later
           hook (and the checkpoint) sees the LR of the next iteration.
        3. EMAHook (SOLVER.EMA): updates the averaged weights from this step's weights,
           before they are evaluated or saved.
        4. EvalHook: evaluates after the weights (and EMA) of this iteration are final.
        5. BestCheckpointer: reads this iteration's evaluation results, so after EvalHook.
        6. Hooks named in cfg.HOOKS: see every built-in state update above, and their own
           state is still saved by the checkpointer that follows.
        7. PeriodicWriter (main process): after every hook that logs metrics, and before the
           checkpoint: once a checkpoint of iteration i exists, the metrics of iteration i
           are in metrics.json (a run killed right after the save loses no row on resume).
        8. PeriodicCheckpointer: last, after every hook that changes state, so the checkpoint
           holds the state a resumed run needs at the start of the next iteration.
        9. StopOnSignal: after a SIGTERM/SIGINT, saves this iteration (unless 8 just did) and
           stops training with ``TrainingInterrupted``.

        Hooks added later with :meth:`register_hooks` run after these.
        """
        cfg = self.cfg
        out: list[hooks.HookBase] = [hooks.IterationTimer(), hooks.LRScheduler(self.scheduler)]
        if cfg.SOLVER.EMA.ENABLED:
            self._ema = hooks.EMAHook(self.model, cfg.SOLVER.EMA.DECAY)
            out.append(self._ema)
        _recall_settings(cfg)  # a bad TEST.RECALL_* value fails now, not after training
        out.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._eval_function))
        if cfg.TEST.BEST_METRIC:  # on every rank: saving is collective (RNG states are gathered)
            out.append(hooks.BestCheckpointer(self.checkpointer, cfg.TEST.BEST_METRIC, cfg.TEST.BEST_MODE))
        for name in cfg.HOOKS:
            out.append(hooks.HOOK_REGISTRY.get(name)(cfg, self))
        if comm.is_main_process():
            writers = self.build_writers()
            out.append(hooks.PeriodicWriter(writers, period=cfg.SOLVER.LOG_PERIOD))
        periodic = hooks.PeriodicCheckpointer(
            self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, self.max_iter, cfg.SOLVER.MAX_TO_KEEP, cfg.SOLVER.CHECKPOINT_WRITE_ERROR,
        )
        out += [periodic, hooks.StopOnSignal(self.checkpointer, periodic)]
        return out

    def build_writers(self) -> list[EventWriter]:
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter, self.cfg.SOLVER.IMS_PER_BATCH)

    def _eval_function(self) -> dict[str, Any]:
        if not self.test_dataset_names(self.cfg):
            return {}
        if self._ema is not None:
            with self._ema.apply():
                return self.test(self.cfg, self.model)
        return self.test(self.cfg, self.model)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        return state

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a checkpoint in OUTPUT_DIR: restore everything and continue
        after its iteration. Otherwise load ``MODEL.WEIGHTS`` (model only) and start at 0.

        A group restarted by torchrun (``TORCHELASTIC_RESTART_COUNT`` > 0) always resumes: the
        restarted command is the first one, without ``--resume``."""
        from .launch import elastic_restart_count

        if not resume and elastic_restart_count() > 0:
            logger.info(f"torchrun restart {elastic_restart_count()}: resuming from the last complete checkpoint of {self.cfg.OUTPUT_DIR}")
            resume = True
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        self._resume_extra = extra
        if resume and "iteration" in extra:
            self.start_iter = int(extra["iteration"]) + 1
        else:
            self.start_iter = 0

    # -- running ---------------------------------------------------------------------
    def train(self) -> dict[str, Any]:  # type: ignore[override]
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last eval results."""
        # The loader (positioned at start_iter) is built before the RNG states are restored:
        # building/skipping may draw random numbers, the training steps must not see that.
        loader = self.build_train_loader(self.cfg, self.start_iter)
        self._trainer.reset_data_loader(loader)
        _ = self._trainer.data_iter  # creates the iterator now
        Checkpointer.restore_rng(self._resume_extra)
        if self.start_iter > 0 and comm.is_main_process():
            _truncate_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.start_iter)
        super().train(self.start_iter, self.max_iter)
        ev = [h for h in self._hooks if isinstance(h, hooks.EvalHook)]
        return ev[0].last_results if ev else {}

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()


def _recall_settings(cfg: CfgNode) -> dict[str, Any]:
    """COCOEvaluator's recall-report arguments from ``TEST.RECALL_*``, checked (``ConfigError``)."""
    from ..evaluation.recall import check_recall_settings

    thresholds, edges = list(cfg.TEST.RECALL_SCORE_THRESHOLDS), list(cfg.TEST.RECALL_SIZE_EDGES)
    check_recall_settings(thresholds, edges, ("TEST.RECALL_SCORE_THRESHOLDS", "TEST.RECALL_SIZE_EDGES"))
    return {"recall_score_thresholds": thresholds, "recall_size_edges": edges}


def _log_results(name: str, results: dict[str, Any]) -> None:
    for task, metrics in results.items():
        if isinstance(metrics, dict):
            # per-class APs and nested groups (the recall table) are logged by the evaluator
            main = {k: v for k, v in metrics.items() if not k.startswith("AP-") and isinstance(v, (int, float))}
            text = "  ".join(f"{k}: {v:.4f}" for k, v in main.items())
            logger.info(f"Evaluation of {name} ({task}): {text}")


class DefaultPredictor:
    """Single-image inference with a config and ``MODEL.WEIGHTS``.

    ``predictor(image)`` takes what the data layer's ``InferencePreprocessor`` takes (a
    path, PIL image, ``HxWxC`` uint8 array or ``CxHxW`` uint8 tensor, RGB by default),
    applies the test-time resizing of the test loader, and returns
    ``{"instances": Instances}`` in the input image's coordinates, on ``MODEL.DEVICE``.

    It is the deployment :class:`retinakit.export.Predictor` over a
    :class:`~retinakit.export.predictor.TorchBackend`: the same weight loading
    (:func:`retinakit.export.load_model`, not strict: tensors the weights do not cover keep
    their initial values, with a warning; without ``MODEL.WEIGHTS`` the model keeps its
    initialisation), the same inference preparation (FrozenBN folded, ``channels_last``) and
    the same rescaling to the original image size. ``self.model`` is the prepared model.
    """

    def __init__(self, cfg: CfgNode) -> None:
        from ..data import build_inference_preprocess
        from ..export.predictor import Predictor, TorchBackend, load_model
        from ..modeling import build_model

        self.cfg = cfg.clone()
        model = load_model(self.cfg, cfg.MODEL.WEIGHTS, strict=False) if cfg.MODEL.WEIGHTS else build_model(self.cfg)
        backend = TorchBackend(model, copy=False, device_outputs=True)
        self.model = backend.model
        self.predictor = Predictor(backend, build_inference_preprocess(self.cfg))
        self.preprocess = self.predictor.preprocess

    def __call__(self, image: Any, input_format: str = "RGB") -> dict[str, Any]:
        return {"instances": self.predictor(image, input_format)[0]}
