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

``DATALOADER.ON_BAD_IMAGE skip``: an undecodable file fails a whole DALI batch, so the
loaders check every image file first (:mod:`retinakit.data.image_check`: header,
completeness, size, a format DALI decodes), leave the bad ones out of the sampler's stream
and log one summary line. With "error" nothing is checked up front (no cost); a failing
batch raises a :class:`BadImageError` naming the file, image id and problem.
:class:`DaliInferenceLoader` is the deterministic test-time loader (test resize only).
"""
from __future__ import annotations

import collections
import importlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from .errors import BadImageError, DatasetError, check_policy
from .image_check import image_problem, report_bad_images
from .image_io import read_image, size_mismatch
from .mapper import DatasetMapper, annotations_to_instances
from .samplers import (
    InferenceSampler,
    TrainingSampler,
    batch_indices,
    portrait_flags,
    world_info,
)
from .transforms import DetectionTransform, InferencePreprocessor, TransformParams, build_inference_preprocess

__all__ = [
    "DALI_IMAGE_FORMATS",
    "DaliInferenceLoader",
    "DaliLoader",
    "build_dali_test_loader",
    "build_dali_train_loader",
    "dali_available",
]

# PIL format names of the files fn.decoders.image reads (JPEG, JPEG 2000, PNG, TIFF, BMP, PNM, WebP).
DALI_IMAGE_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000", "PNG", "TIFF", "BMP", "PPM", "WEBP"})
_SKIP_HINT = " (To drop such images and go on, set DATALOADER.ON_BAD_IMAGE skip.)"
_MISSED_HINT = (
    " The image check before the pipeline (DATALOADER.ON_BAD_IMAGE skip) did not catch this, and DALI cannot"
    " drop an image once a batch has failed: remove the file from the dataset, or use DATALOADER.BACKEND torch."
)

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
        raise ConfigError(f"DATALOADER.DALI.DEVICE must be 'auto', 'cpu' or 'gpu', got {device!r}.")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise RuntimeError("DATALOADER.DALI.DEVICE is 'gpu' but no CUDA device is visible; use 'auto' or 'cpu'.")
    return torch.cuda.current_device()


def _build_pipeline(
    source: Any, batch_size: int, device_id: int | None, num_threads: int, prefetch: int, image_format: str, flips: bool = True
):
    """Pipeline: encoded bytes -> decode -> resize to the fed ``(out_h, out_w)`` -> (flip) ->
    ``uint8 [3, out_h, out_w]``, plus the decoded ``[H, W, C]`` shape. ``source`` yields
    ``(raws, out_h, out_w[, hflip, vflip])`` per batch; without ``flips`` there is no flip operator."""
    dali = _dali()
    fn, types = dali.fn, dali.types
    gpu = device_id is not None

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=prefetch)
    def pipe():
        fed = fn.external_source(source=source, num_outputs=5 if flips else 3, batch=True)
        raw, out_h, out_w = fed[:3]
        out_type = types.RGB if image_format == "RGB" else types.BGR
        img = fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=out_type)
        decoded_shape = img.shape() if hasattr(img, "shape") else fn.shapes(img)
        img = fn.resize(img, resize_x=out_w, resize_y=out_h, interp_type=types.INTERP_LINEAR, antialias=True)
        if flips:
            img = fn.flip(img, horizontal=fed[3], vertical=fed[4])
        return fn.transpose(img, perm=[2, 0, 1]), decoded_shape

    p = pipe()
    p.build()
    return p


def _read_bytes(d: dict[str, Any], hint: str) -> np.ndarray:
    """The encoded file of ``d`` as ``uint8 [N]``."""
    try:
        return np.fromfile(d["file_name"], dtype=np.uint8)
    except OSError as e:
        problem = image_problem(d)
        message = problem[1] if problem else f"Image {d['file_name']} (image id {d.get('image_id')}) cannot be read: {e}."
        raise BadImageError(message.rstrip(".") + "." + hint, kind="missing image file") from e


def _dali_reason(error: Exception) -> str:
    """The informative lines of a DALI pipeline error (operator and failure), on one line."""
    skip = ("Critical error", "Current pipeline", "File ", "which was used", "encountered")
    lines = [ln.strip() for ln in str(error).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(skip) and "fn." not in ln.split("(")[0][:20]]
    return " ".join(keep)[:400] or str(error)[:400]


def _culprit(dicts: list[dict]) -> str | None:
    """The message of the first bad image among ``dicts``: the image check
    (:func:`image_problem`, DALI's formats), then a full decode with PIL."""
    for d in dicts:
        problem = image_problem(d, DALI_IMAGE_FORMATS)
        if problem is not None:
            return problem[1].rstrip(".")
    for d in dicts:
        try:
            read_image(d["file_name"], context=f"image id {d.get('image_id')}")
        except BadImageError as bad:
            return str(bad).rstrip(".")
    return None


def _batch_error(dicts: list[dict], error: Exception, hint: str) -> BadImageError:
    """Name the image that broke a DALI batch (``dicts``: the images of the pending batches,
    the failing one first)."""
    culprit = _culprit(dicts)
    if culprit is not None:
        return BadImageError(f"{culprit} (DALI: {_dali_reason(error)}).{hint}")
    files = [d["file_name"] for d in dicts]
    return BadImageError(f"DALI failed on a batch with the images {files}: {_dali_reason(error)}.{hint}")


def _hw(shape: Any) -> tuple[int, int]:
    """``(H, W)`` of a decoded ``[H, W, C]`` shape tensor."""
    hwc = np.array(shape)
    return int(hwc[0]), int(hwc[1])


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
    ``instances`` built from the dicts' annotations. ``on_bad_image`` "skip" checks every
    image file before the pipeline is built (:meth:`_find_bad`; ``name`` starts the
    summary line) and leaves the bad ones out of the index stream; ``skipped`` counts them.
    """

    flips = True  # the pipeline has flip operators (fed by the random parameters)

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
        on_bad_image: str = "error",
        name: str = "DALI loader",
    ) -> None:
        self.dataset, self.transform, self.batch_size = dataset, transform, batch_size
        self.indices, self.keep_instances, self.group = indices, keep_instances, group
        self.image_format, self.num_threads, self.prefetch = image_format, num_threads, prefetch
        self.device_id = _resolve_device(device)
        self.seed, self.start_iter = seed, start_iter
        self.on_bad_image = check_policy(on_bad_image, "DATALOADER.ON_BAD_IMAGE")
        self.generator = torch.Generator().manual_seed(seed)
        _dali()
        _check_sizes(dataset)
        self.bad: set[int] = self._find_bad(name) if self.on_bad_image == "skip" else set()
        self.skipped = len(self.bad)

    def _find_bad(self, name: str) -> set[int]:
        """Positions of the bad images of the whole dataset (checked by all ranks together:
        every rank constructs its loader)."""
        bad = report_bad_images(self.dataset, "skip", name, formats=DALI_IMAGE_FORMATS, all_ranks=True)
        if self.dataset and len(bad) == len(self.dataset):  # the filtered infinite stream would never yield
            raise DatasetError(f"{name}: all {len(bad)} image files are bad (see the warning above); there is nothing to train on.")
        return bad

    def _hint(self) -> str:
        return _SKIP_HINT if self.on_bad_image == "error" else _MISSED_HINT

    def _batches(self) -> Iterator[list[int]]:
        """Batches of the sampler (aspect-grouped, bad images left out); the first
        ``start_iter`` are skipped, replaying only their random parameters."""
        indices = (i for i in self.indices if i not in self.bad) if self.bad else self.indices
        batches = batch_indices(indices, portrait_flags(self.dataset), self.batch_size, self.group)
        for k, idx in enumerate(batches):
            if k >= self.start_iter:
                yield idx
                continue
            for i in idx:
                d = self.dataset[i]
                self.transform.sample_params(d["height"], d["width"], self.generator)

    def _source(self, batches: Iterator[list[int]], pending: collections.deque):
        hint = self._hint()

        def feed() -> list[list[np.ndarray]]:
            idx = next(batches)  # StopIteration ends the pipeline's epoch
            dicts = [self.dataset[i] for i in idx]
            params = [self.transform.sample_params(d["height"], d["width"], self.generator) for d in dicts]
            pending.append((dicts, params))
            fed = [
                [_read_bytes(d, hint) for d in dicts],
                [np.array(p.out_size[0], np.float32) for p in params],
                [np.array(p.out_size[1], np.float32) for p in params],
            ]
            if self.flips:
                fed += [[np.array(int(p.hflip), np.int32) for p in params], [np.array(int(p.vflip), np.int32) for p in params]]
            return fed

        return feed

    def _sample(self, d: dict[str, Any], p: TransformParams, image: torch.Tensor, decoded: tuple[int, int]) -> dict[str, Any]:
        msg = size_mismatch(d["file_name"], f"image id {d['image_id']}", decoded, (d["height"], d["width"]), seen="when decoded")
        if msg:
            raise BadImageError(msg + self._hint(), kind="size disagrees with file")
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
            raise _batch_error([d for dicts, _ in pending for d in dicts], e, self._hint()) from e
        dicts, params = pending.popleft()
        shapes = shapes.as_cpu() if hasattr(shapes, "as_cpu") else shapes
        return [
            self._sample(d, p, _to_torch(images[k], self.device_id), _hw(shapes[k]))
            for k, (d, p) in enumerate(zip(dicts, params))
        ]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        pending: collections.deque = collections.deque()
        self.generator = torch.Generator().manual_seed(self.seed)  # every pass draws the same parameters
        source = self._source(self._batches(), pending)
        pipe = _build_pipeline(
            source, self.batch_size, self.device_id, self.num_threads, self.prefetch, self.image_format, self.flips
        )
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


def _check_sizes(dataset: list[dict]) -> None:
    missing = next((d for d in dataset if not (d.get("height") and d.get("width"))), None)
    if missing is not None:
        raise DatasetError(
            f"The DALI backend needs 'height' and 'width' in every dataset dict; image id {missing.get('image_id')} "
            f"({missing.get('file_name')}) has none. Datasets loaded by load_coco_json always have them; "
            "add them in your own dataset function, or use DATALOADER.BACKEND torch."
        )


def _test_transform(preprocess: InferencePreprocessor | DetectionTransform) -> DetectionTransform:
    """The transform of ``preprocess``, checked to be deterministic (one size, no flip, no jitter)."""
    t = preprocess if isinstance(preprocess, DetectionTransform) else preprocess.transform
    if len(t.min_sizes) != 1 or t.sampling != "choice" or t.flip != "none" or t.color is not None:
        raise ConfigError(
            "DaliInferenceLoader needs a deterministic test-time transform (one size, no flip, no colour jitter); "
            f"got sizes {t.min_sizes} ({t.sampling}), flip {t.flip!r}, colour jitter {t.color is not None}."
        )
    return t


class DaliInferenceLoader(DaliLoader):
    """Deterministic DALI loader for inference: this rank's shard, in order, in batches.

    ``preprocess``: the :class:`InferencePreprocessor` (or its transform) whose test-time
    resize is applied, computed by the same code (``resized_shape``) as the torch test
    loader's, then executed by DALI (bilinear, antialiased); no flip, no random operator.
    The shard is :class:`InferenceSampler`'s (``rank``/``world_size`` default to
    torch.distributed's): over all ranks every image is read exactly once. Each batch is
    ``list[dict]`` like the torch test loader's: ``image`` uint8 ``[3, H', W']`` (``INPUT.FORMAT``
    order; CUDA with GPU operators), ``height``/``width`` of the original file, ``image_id``,
    ``file_name`` and the other keys of the dataset dict except ``annotations`` (turned into
    ``instances`` with ``keep_instances``). ``len()`` is the number of batches of the shard.
    With ``on_bad_image`` "skip" only the shard's files are checked (no collective).
    """

    flips = False

    def __init__(
        self,
        dataset: list[dict],
        preprocess: InferencePreprocessor | DetectionTransform,
        batch_size: int = 1,
        *,
        keep_instances: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(preprocess, InferencePreprocessor):
            kwargs.setdefault("image_format", preprocess.format)
        self.sampler = InferenceSampler(len(dataset), rank, world_size)
        super().__init__(
            dataset, _test_transform(preprocess), batch_size, self.sampler, keep_instances=keep_instances, group=False, **kwargs
        )
        self.shard: list[int] = [i for i in self.sampler if i not in self.bad]  # what is read, in order
        self.indices = self.shard

    def _find_bad(self, name: str) -> set[int]:
        return report_bad_images(self.dataset, "skip", name, list(self.sampler), DALI_IMAGE_FORMATS)

    def __len__(self) -> int:
        return -(-len(self.shard) // self.batch_size)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        if not self.shard:  # an empty shard: no pipeline to build
            return iter(())
        return super().__iter__()


def build_dali_train_loader(
    cfg: Any, dataset: list[dict], batch_size: int, seed: int, start_iter: int = 0, name: str = "DALI train loader"
) -> DaliLoader:
    """The DALI training loader of ``cfg``: same sampler, grouping, transform and random
    parameters as the torch loader with ``NUM_WORKERS 0`` (one stream, ``stream_seed(seed, rank, 0)``).
    With ``DATALOADER.ON_BAD_IMAGE skip`` bad image files are found first and left out of the stream."""
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
        on_bad_image=cfg.DATALOADER.ON_BAD_IMAGE,
        name=name,
    )


def build_dali_test_loader(
    cfg: Any,
    dataset: list[dict],
    batch_size: int = 1,
    keep_instances: bool = False,
    name: str = "DALI test loader",
    mapper: DatasetMapper | None = None,
) -> DaliInferenceLoader:
    """:class:`DaliInferenceLoader` over this rank's shard of ``dataset`` with the
    preprocessing of ``build_inference_preprocess(cfg)``, or with the transform, format,
    ``keep_instances`` and bad-image policy of a test-time ``mapper``."""
    common = {
        "device": cfg.DATALOADER.DALI.DEVICE,
        "num_threads": cfg.DATALOADER.DALI.NUM_THREADS,
        "prefetch": cfg.DATALOADER.DALI.PREFETCH_QUEUE_DEPTH,
        "name": name,
    }
    if mapper is not None:
        return DaliInferenceLoader(
            dataset,
            mapper.transform,
            batch_size,
            keep_instances=mapper.keep_instances,
            image_format=mapper.image_format,
            on_bad_image=mapper.on_bad_image,
            **common,
        )
    preprocess = build_inference_preprocess(cfg)
    return DaliInferenceLoader(
        dataset, preprocess, batch_size, keep_instances=keep_instances, on_bad_image=cfg.DATALOADER.ON_BAD_IMAGE, **common
    )
