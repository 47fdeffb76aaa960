"""``DatasetEvaluator`` protocol and ``inference_on_dataset`` (progress bar, images/s)."""
from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from ..utils import comm

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates model outputs with ``process(inputs, outputs)``; ``evaluate()`` returns
    ``{task: {metric: value}}`` on the main process (``{}`` elsewhere)."""

    def reset(self) -> None:
        pass

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        raise NotImplementedError


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators and merges their results (task names must differ)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        results: dict[str, Any] = OrderedDict()
        for e in self._evaluators:
            for k, v in (e.evaluate() or {}).items():
                if k in results:
                    raise KeyError(f"Two evaluators produced results for the same task {k!r}.")
                results[k] = v
        return results


def _progress(iterable: Iterable[Any], total: int | None, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="inference", unit="img", file=sys.stdout, dynamic_ncols=True, mininterval=1.0)


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[list[dict[str, Any]]],
    evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``data_loader`` and evaluate with ``evaluator``.

    Shows a tqdm progress bar on the main process and logs images/s (model time, the
    first few warm-up batches excluded, and total). The model's train/eval mode is restored.
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    warmup = min(5, (total or 1) - 1) if total else 0
    n_images = n_timed = 0
    model_time = 0.0
    start = time.perf_counter()
    with ExitStack() as stack:
        was_training = model.training
        model.eval()
        stack.callback(model.train, was_training)
        stack.enter_context(torch.inference_mode())
        bar = _progress(data_loader, total, progress and comm.is_main_process())
        for idx, inputs in enumerate(bar):
            t0 = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if idx >= warmup:
                model_time += dt
                n_timed += len(inputs)
            n_images += len(inputs)
            evaluator.process(inputs, outputs)
    total_time = time.perf_counter() - start
    world = comm.get_world_size()
    logger.info(
        f"Inference on {n_images} images (per process, {world} process(es)) took {total_time:.1f}s: "
        f"{n_images / max(total_time, 1e-9):.1f} images/s overall, "
        f"{n_timed / max(model_time, 1e-9):.1f} images/s model only"
    )
    results = evaluator.evaluate()
    return results if results is not None else {}
