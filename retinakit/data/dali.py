"""NVIDIA DALI backend (``DATALOADER.BACKEND: dali``; ``pip install retinakit[dali]``).

The dataset dicts, sampler, aspect-ratio grouping and random parameters
(:meth:`DetectionTransform.sample_params`) are the torch backend's; DALI reads the files'
bytes from an external source and decodes, resizes (bilinear, antialiased), flips and
transposes to CHW. Boxes are transformed by the same code as the torch backend, so the
batches are the same ``list[dict]`` (``image`` uint8 ``[3, H, W]``, ``instances``, ...).
Normalisation and padding happen in the model (``ImageList``) for both backends.
CPU operators run without a GPU (``device_id=None``); with ``DATALOADER.DALI.DEVICE``
"auto" or "gpu" and a visible GPU, decoding ("mixed") and resizing run on the GPU and
the images come back as CUDA tensors.
"""
from __future__ import annotations

import collections
import importlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .errors import BadImageError, DatasetError
from .image_io import read_image
from .mapper import annotations_to_instances
from .samplers import (
    InferenceSampler,
    TrainingSampler,
    batch_indices,
    portrait_flags,
    world_info,
)
from .transforms import DetectionTransform, TransformParams

__all__ = ["DaliLoader", "build_dali_test_loader", "build_dali_train_loader", "dali_available"]

_MISSING = (
    "DATALOADER.BACKEND 'dali' needs NVIDIA DALI, which is not installed. Install the extra: "
    "pip install 'retinakit[dali]' (it provides nvidia-dali-cuda130), or set DATALOADER.BACKEND torch."
)


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _dali():
    try:
        dali = importlib.import_module("nvidia.dali")
        importlib.import_module("nvidia.dali.fn")
        importlib.import_module("nvidia.dali.types")
    except ImportError:
        raise ImportError(_MISSING) from None
    return dali


def _resolve_device(device: str) -> int | None:
    """CUDA device id for DALI's GPU operators, or None for CPU only."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"DATALOADER.DALI.DEVICE must be 'auto', 'cpu' or 'gpu', got {device!r}.")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise RuntimeError("DATALOADER.DALI.DEVICE is 'gpu' but no CUDA device is visible; use 'auto' or 'cpu'.")
    return torch.cuda.current_device()


def _build_pipeline(source: Any, batch_size: int, device_id: int | None, num_threads: int, prefetch: int, image_format: str):
    dali = _dali()
    fn, types = dali.fn, dali.types
    gpu = device_id is not None

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=prefetch)
    def pipe():
        raw, out_h, out_w, hflip, vflip = fn.external_source(source=source, num_outputs=5, batch=True)
        out_type = types.RGB if image_format == "RGB" else types.BGR
        img = fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=out_type)
        decoded_shape = img.shape() if hasattr(img, "shape") else fn.shapes(img)
        img = fn.resize(img, resize_x=out_w, resize_y=out_h, interp_type=types.INTERP_LINEAR, antialias=True)
        img = fn.flip(img, horizontal=hflip, vertical=vflip)
        return fn.transpose(img, perm=[2, 0, 1]), decoded_shape

    p = pipe()
    p.build()
    return p


def _read_bytes(d: dict[str, Any]) -> np.ndarray:
    try:
        return np.fromfile(d["file_name"], dtype=np.uint8)
    except OSError as e:
        raise BadImageError(
            f"Image {d['file_name']} (image id {d.get('image_id')}) cannot be read: {e}. "
            "Check the image root directory and the 'file_name' entry in the JSON."
        ) from e


def _dali_reason(error: Exception) -> str:
    """The informative lines of a DALI pipeline error (operator and failure), on one line."""
    skip = ("Critical error", "Current pipeline", "File ", "which was used", "encountered")
    lines = [ln.strip() for ln in str(error).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(skip) and "fn." not in ln.split("(")[0][:20]]
    return " ".join(keep)[:400] or str(error)[:400]


def _batch_error(dicts: list[dict], error: Exception) -> BadImageError:
    """Name the image that broke a DALI batch (found by decoding the batch with PIL)."""
    hint = " DALI cannot skip single images: fix or remove the file, or use DATALOADER.BACKEND torch with DATALOADER.ON_BAD_IMAGE skip."
    for d in dicts:
        try:
            read_image(d["file_name"], context=f"image id {d.get('image_id')}")
        except BadImageError as bad:
            return BadImageError(f"{bad} (DALI: {_dali_reason(error)}){hint}")
    files = [d["file_name"] for d in dicts]
    return BadImageError(f"DALI failed on a batch with the images {files}: {_dali_reason(error)}.{hint}")


def _to_torch(tensor: Any, device_id: int | None) -> torch.Tensor:
    if device_id is None:
        return torch.from_numpy(np.array(tensor))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=f"cuda:{device_id}")
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device_id))
    return out


class DaliLoader:
    """Iterable of ``list[dict]`` produced by a DALI pipeline, in the torch loader's format.

    ``indices``: the sampler (infinite for training, finite for inference); batches of
    ``batch_size`` are grouped by orientation when ``group``; ``keep_instances`` adds
    ``instances`` built from the dicts' annotations.
    """

    def __init__(
        self,
        dataset: list[dict],
        transform: DetectionTransform,
        batch_size: int,
        indices: Iterable[int],
        *,
        keep_instances: bool = True,
        group: bool = True,
        image_format: str = "RGB",
        device: str = "auto",
        num_threads: int = 2,
        prefetch: int = 2,
        seed: int = 0,
        start_iter: int = 0,
    ) -> None:
        self.dataset, self.transform, self.batch_size = dataset, transform, batch_size
        self.indices, self.keep_instances, self.group = indices, keep_instances, group
        self.image_format, self.num_threads, self.prefetch = image_format, num_threads, prefetch
        self.device_id = _resolve_device(device)
        self.seed, self.start_iter = seed, start_iter
        self.generator = torch.Generator().manual_seed(seed)
        _dali()
        missing = next((d for d in dataset if not (d.get("height") and d.get("width"))), None)
        if missing is not None:
            raise DatasetError(
                f"The DALI backend needs 'height' and 'width' in every dataset dict; image id {missing.get('image_id')} "
                f"({missing.get('file_name')}) has none. Datasets loaded by load_coco_json always have them; "
                "add them in your own dataset function, or use DATALOADER.BACKEND torch."
            )

    def _batches(self) -> Iterator[list[int]]:
        """Batches of the sampler (aspect-grouped); the first ``start_iter`` are skipped,
        replaying only their random parameters."""
        batches = batch_indices(self.indices, portrait_flags(self.dataset), self.batch_size, self.group)
        for k, idx in enumerate(batches):
            if k >= self.start_iter:
                yield idx
                continue
            for i in idx:
                d = self.dataset[i]
                self.transform.sample_params(d["height"], d["width"], self.generator)

    def _source(self, batches: Iterator[list[int]], pending: collections.deque):
        def feed():
            idx = next(batches)  # StopIteration ends the pipeline's epoch
            dicts = [self.dataset[i] for i in idx]
            params = [self.transform.sample_params(d["height"], d["width"], self.generator) for d in dicts]
            pending.append((dicts, params))
            raws = [_read_bytes(d) for d in dicts]
            h = [np.array(p.out_size[0], np.float32) for p in params]
            w = [np.array(p.out_size[1], np.float32) for p in params]
            hf = [np.array(int(p.hflip), np.int32) for p in params]
            vf = [np.array(int(p.vflip), np.int32) for p in params]
            return raws, h, w, hf, vf

        return feed

    def _sample(self, d: dict[str, Any], p: TransformParams, image: torch.Tensor, decoded: tuple[int, int]) -> dict[str, Any]:
        if (d["height"], d["width"]) != decoded:
            raise BadImageError(
                f"Image {d['file_name']} (image id {d['image_id']}) decodes to {decoded[1]}x{decoded[0]} (width x height) "
                f"but the dataset says {d['width']}x{d['height']}. Fix 'width'/'height' in the JSON."
            )
        if self.transform.color is not None:
            image = self.transform.apply_image(image, TransformParams(p.out_size, photometric_seed=p.photometric_seed))
        out = {k: v for k, v in d.items() if k != "annotations"}
        out["image"] = image
        if self.keep_instances and "annotations" in d:
            boxes = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32).reshape(-1, 4)
            boxes = self.transform.apply_boxes(boxes, (d["height"], d["width"]), p)
            out["instances"] = annotations_to_instances(d["annotations"], boxes, p.out_size)
        return out

    def _run(self, pipe: Any, pending: collections.deque) -> list[dict[str, Any]] | None:
        try:
            images, shapes = pipe.run()
        except StopIteration:
            return None
        except RuntimeError as e:
            raise _batch_error(pending[0][0] if pending else [], e) from e
        dicts, params = pending.popleft()
        shapes = shapes.as_cpu() if hasattr(shapes, "as_cpu") else shapes
        return [
            self._sample(d, p, _to_torch(images[k], self.device_id), tuple(int(v) for v in np.array(shapes[k])[:2]))
            for k, (d, p) in enumerate(zip(dicts, params))
        ]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        pending: collections.deque = collections.deque()
        self.generator = torch.Generator().manual_seed(self.seed)  # every pass draws the same parameters
        source = self._source(self._batches(), pending)
        pipe = _build_pipeline(source, self.batch_size, self.device_id, self.num_threads, self.prefetch, self.image_format)
        try:
            while True:
                batch = self._run(pipe, pending)
                if batch is None:
                    return
                yield batch
        finally:  # stop DALI's threads now (an error or an abandoned iterator), not at some later GC
            shutdown = getattr(pipe, "_shutdown", None)
            if shutdown is not None:
                shutdown()
            del pipe


def build_dali_train_loader(cfg: Any, dataset: list[dict], batch_size: int, seed: int, start_iter: int = 0) -> DaliLoader:
    """The DALI training loader of ``cfg``: same sampler, grouping, transform and random
    parameters as the torch loader with ``NUM_WORKERS 0`` (one stream, ``stream_seed(seed, rank, 0)``)."""
    from .build import stream_seed

    rank = world_info()[0]
    return DaliLoader(
        dataset,
        DetectionTransform.from_config(cfg, is_train=True),
        batch_size,
        TrainingSampler(len(dataset), seed=seed),
        keep_instances=True,
        group=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        image_format=cfg.INPUT.FORMAT,
        device=cfg.DATALOADER.DALI.DEVICE,
        num_threads=cfg.DATALOADER.DALI.NUM_THREADS,
        prefetch=cfg.DATALOADER.DALI.PREFETCH_QUEUE_DEPTH,
        seed=stream_seed(seed, rank, 0),
        start_iter=start_iter,
    )


def build_dali_test_loader(cfg: Any, dataset: list[dict], batch_size: int = 1, keep_instances: bool = False) -> DaliLoader:
    """DALI loader over this rank's shard of ``dataset`` with the test-time transform."""
    return DaliLoader(
        dataset,
        DetectionTransform.from_config(cfg, is_train=False),
        batch_size,
        InferenceSampler(len(dataset)),
        keep_instances=keep_instances,
        group=False,
        image_format=cfg.INPUT.FORMAT,
        device=cfg.DATALOADER.DALI.DEVICE,
        num_threads=cfg.DATALOADER.DALI.NUM_THREADS,
        prefetch=cfg.DATALOADER.DALI.PREFETCH_QUEUE_DEPTH,
    )
