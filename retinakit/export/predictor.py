"""One predictor API for every deployment backend: ``.pth`` (PyTorch), ``.onnx``, ``.plan``/``.engine``.

``predictor = load_predictor(path, ...)``; ``predictor(images) -> list[Instances]`` with
``pred_boxes`` (XYXY, original image coordinates), ``scores`` and ``pred_classes`` (int64).
Every backend receives the same input: images prepared by the data layer's inference
preprocessing (resize), padded bottom/right to the backbone's size divisibility.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import CfgNode
from ..structures import Boxes, Instances
from ..utils.errors import UserInputError
from ._deps import require
from .calibration import pad_batch

__all__ = ["OnnxRuntimeBackend", "Predictor", "PredictorError", "TorchBackend", "load_model", "load_predictor"]

logger = logging.getLogger(__name__)

# boxes [D, 4], scores [D], classes [D]: numpy arrays, or tensors (TorchBackend(device_outputs=True)).
Detections = tuple[Any, Any, Any]


class PredictorError(ValueError, UserInputError):
    """The model file cannot be used (missing, unknown type, weights that do not fit the config)."""


class TorchBackend:
    """Runs the PyTorch model (``eval``) on already-resized uint8 images.

    It runs ``model`` prepared by :func:`retinakit.modeling.prepare_for_inference`
    (``FrozenBatchNorm2d`` folded into the convolutions, weights ``channels_last``): a copy
    of it by default, so the caller's model is left untouched; ``copy=False`` prepares the
    given model in place (for a model the caller no longer uses otherwise).

    ``run`` returns numpy arrays, like the other backends; ``device_outputs=True`` returns
    tensors on the model's device instead.
    """

    name, precision = "pytorch", "fp32"

    def __init__(self, model: torch.nn.Module, *, copy: bool = True, device_outputs: bool = False) -> None:
        from ..modeling import prepare_for_inference

        self.model = prepare_for_inference(copy_module(model) if copy else model.eval())
        self.device_outputs = device_outputs

    @torch.inference_mode()
    def run(self, tensors: list[torch.Tensor]) -> list[Detections]:
        """Images ``[3, H, W]`` uint8 (already resized) -> per image ``boxes [D, 4]`` (XYXY, in
        ``H x W``), ``scores [D]``, ``classes [D]``."""
        inputs = [{"image": t, "height": int(t.shape[1]), "width": int(t.shape[2])} for t in tensors]
        out = []
        for r in self.model(inputs):
            inst = r["instances"]
            dets = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
            out.append(dets if self.device_outputs else tuple(t.cpu().numpy() for t in dets))
        return out


def copy_module(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode."""
    return copy.deepcopy(model).eval()


def unpack_e2e(num_dets: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[Detections]:
    """Fixed-size e2e outputs ``[N]``, ``[N, D, 4]``, ``[N, D]``, ``[N, D]`` -> per-image arrays."""
    return [
        (boxes[i, :n].astype(np.float32), scores[i, :n].astype(np.float32), classes[i, :n].astype(np.int64))
        for i, n in enumerate(np.asarray(num_dets).reshape(-1).astype(int).tolist())
    ]


class OnnxRuntimeBackend:
    """Runs an end-to-end retinakit ONNX model in onnxruntime (CPU, or CUDA when asked and available)."""

    name = "onnxruntime"

    def __init__(self, path: str, divisibility: int, device: str = "cpu", threads: int = 0, precision: str = "fp32") -> None:
        ort = require("onnxruntime", "running ONNX models")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise PredictorError(
                    "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)."
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.divisibility = divisibility
        self.precision = precision

    def run(self, tensors: list[torch.Tensor]) -> list[Detections]:
        images, sizes = pad_batch(tensors, self.divisibility)
        outs = self.session.run(["num_dets", "boxes", "scores", "classes"], {"images": images, "image_sizes": sizes})
        return unpack_e2e(*outs)


class Predictor:
    """Preprocess -> backend -> detections in original image coordinates.

    ``predictor(images, input_format="RGB")`` takes one image or a list: file paths, PIL
    images, ``HWC uint8`` arrays or ``CHW uint8`` tensors. Returns one ``Instances`` per image.
    """

    def __init__(self, backend: Any, preprocess: Any, metadata: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.preprocess = preprocess
        self.metadata = dict(metadata or {})

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata.get("class_names")

    def __call__(self, images: Any, input_format: str = "RGB") -> list[Instances]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return []
        prepared = [self.preprocess(im, input_format) for im in images]
        dets = self.backend.run([t for t, _ in prepared])
        return [to_instances(d, (int(t.shape[1]), int(t.shape[2])), size) for (t, size), d in zip(prepared, dets)]


def to_instances(dets: Detections, input_size: tuple[int, int], image_size: tuple[int, int]) -> Instances:
    """One image's ``boxes [D, 4]`` (XYXY in the network input ``input_size = (h, w)``),
    ``scores [D]``, ``classes [D]`` -> ``Instances`` in ``image_size = (height, width)``
    (boxes scaled by ``width / w`` and ``height / h``; float32 boxes and scores, int64 classes,
    on the device of the given tensors, CPU for numpy arrays)."""
    boxes, scores, classes = dets
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    (h, w), (oh, ow) = input_size, image_size
    if (h, w) != (oh, ow):
        b[:, 0::2] *= ow / w
        b[:, 1::2] *= oh / h
    return Instances(
        (oh, ow), pred_boxes=Boxes(b), scores=torch.as_tensor(scores, dtype=torch.float32).reshape(-1),
        pred_classes=torch.as_tensor(classes).reshape(-1).to(torch.int64),
    )


def _preprocess_from_meta(meta: dict[str, Any]) -> Any:
    from ..data.transforms import InferencePreprocessor

    # Models that resize inside PyTorch (INPUT.RESIZE_IN_MODEL) are exported without the
    # resize: deployed runtimes resize in the preprocessing instead.
    return InferencePreprocessor(
        min_size=int(meta.get("min_size", 0)), max_size=int(meta.get("max_size", 0)),
        format=meta.get("input_format", "RGB"), resize=True,
    )


def load_model(cfg: CfgNode, weights: str, strict: bool = True) -> torch.nn.Module:
    """Build ``cfg``'s model (eval, on ``MODEL.DEVICE``) and load ``weights``, checked against ``cfg``.

    :class:`PredictorError` with a clear message when the file is missing or unreadable or the
    weights do not fit; with ``strict``, also when they leave tensors of the model uncovered
    (otherwise those keep their initial values, with the loader's warning).
    """
    from ..checkpoint.checkpointer import load_checkpoint_file
    from ..checkpoint.model_loading import CheckpointMismatchError, load_model_weights
    from ..modeling import build_model

    if not os.path.isfile(weights):
        raise PredictorError(f"Weights file '{weights}' does not exist.")
    model = build_model(cfg).eval()
    try:
        ckpt = load_checkpoint_file(weights)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one message
        raise PredictorError(f"Cannot read weights '{weights}': {e}") from None
    try:
        report = load_model_weights(model, ckpt, weights, cfg=cfg)
    except CheckpointMismatchError as e:
        raise PredictorError(str(e)) from None
    if strict and (report.skipped_class_specific or report.missing):
        what = [k for k, *_ in report.skipped_class_specific] + list(report.missing)
        raise PredictorError(
            f"The weights in '{weights}' do not cover this model ({len(what)} tensors would keep random values, "
            f"e.g. {what[:3]}): wrong --config-file for these weights (class count or architecture)?"
        )
    return model


def model_metadata(cfg: Any, model: torch.nn.Module, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """What a deployed model needs to be run without its config (stored with ONNX/engines)."""
    if class_names is None:
        try:
            from ..data import MetadataCatalog

            names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
            class_names = MetadataCatalog.get(names[0]).get("thing_classes") if names else None
        except Exception:  # noqa: BLE001 - names are a nicety
            class_names = None
    return {
        "input_format": cfg.INPUT.FORMAT,
        "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
        "resize_in_model": bool(cfg.INPUT.RESIZE_IN_MODEL),
        "size_divisibility": int(getattr(model.backbone, "size_divisibility", 32) or 32),
        "num_classes": int(model.num_classes),
        "max_detections": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "class_names": list(class_names) if class_names else None,
        "config": cfg.dump(),
    }


def _cfg_from(config_file: str | None, cfg: Any, opts: Sequence[str] | None) -> Any:
    from ..config import get_cfg

    if cfg is not None:
        return cfg
    if not config_file:
        raise PredictorError("A .pth checkpoint needs its config: pass config_file (--config-file).")
    if not os.path.isfile(config_file):
        raise PredictorError(f"Config file '{config_file}' does not exist.")
    c = get_cfg()
    c.merge_from_file(config_file)
    if opts:
        c.merge_from_list(list(opts))
    return c


def load_predictor(
    path: str,
    *,
    config_file: str | None = None,
    cfg: Any = None,
    opts: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int = 0,
) -> Predictor:
    """A :class:`Predictor` for ``path``, chosen by its extension.

    * ``.pth`` / ``.pt`` / ``.safetensors``: PyTorch; needs ``config_file`` (or ``cfg``).
    * ``.onnx``: an end-to-end ONNX made by :func:`export_onnx` (metadata inside); onnxruntime
      on ``device`` ("cpu" or "cuda").
    * ``.plan`` / ``.engine``: a TensorRT engine from :func:`retinakit.export.tensorrt.build_engine`
      (metadata in ``<path>.json``); needs ``pip install retinakit[tensorrt]`` and a GPU.
    """
    if not os.path.isfile(path):
        raise PredictorError(f"Model file '{path}' does not exist.")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt", ".pkl", ".safetensors"):
        c = _cfg_from(config_file, cfg, opts).clone()
        c.MODEL.DEVICE = device
        model = load_model(c, path).to(device)
        meta = model_metadata(c, model)
        from ..data import build_inference_preprocess

        return Predictor(TorchBackend(model), build_inference_preprocess(c), meta)
    if ext == ".onnx":
        from .onnx import read_metadata

        meta = read_metadata(path)
        if not meta:
            raise PredictorError(f"'{path}' has no retinakit metadata: export it with retinakit.export.export_onnx.")
        if meta.get("mode") != "e2e":
            raise PredictorError(f"'{path}' is a heads-only export: the predictor needs an end-to-end export (mode='e2e').")
        backend = OnnxRuntimeBackend(path, meta["size_divisibility"], device, threads, meta.get("precision", "fp32"))
        return Predictor(backend, _preprocess_from_meta(meta), meta)
    if ext in (".plan", ".engine"):
        from .tensorrt import TensorRTBackend, read_engine_metadata

        meta = read_engine_metadata(path)
        return Predictor(TensorRTBackend(path, meta["size_divisibility"], meta.get("precision", "")), _preprocess_from_meta(meta), meta)
    raise PredictorError(f"Unknown model type '{ext}' for '{path}': expected .pth, .onnx, .plan or .engine.")


def save_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
