"""DeepStream: an ONNX graph whose outputs DeepStream's stock NMS parser reads, and its nvinfer config.

DeepStream's ``nvinfer`` element resizes each frame to the network's ``infer-dims``, converts it
to planar float as ``y = net-scale-factor * (x - offsets[c])`` and runs the engine. The stock
parser ``NvDsInferParseCustomBatchedNMSTLT`` of ``libnvds_infercustomparser.so`` (the one used
for models ending in TensorRT's BatchedNMS plugin) then reads four output bindings, *by position*:
``keepCount [1]`` int32, ``bboxes [D, 4]`` float32 ``(x1, y1, x2, y2)`` normalised to [0, 1]
of the network input, ``scores [D]`` float32 and ``classes [D]`` **float32**. It keeps at most
200 objects and uses the class-0 ``pre-cluster-threshold`` for all classes.

:class:`DeepStreamModule` is the e2e graph in that layout: one input ``images [N, 3, H, W]``
(fixed ``H, W``), the per-channel part of the pixel std as a constant multiply (nvinfer's scale
is one scalar, so that part is exact in the graph), outputs ``num_detections [N, 1]`` int32,
``detection_boxes [N, D, 4]`` normalised, ``detection_scores [N, D]``, ``detection_classes
[N, D]`` float32. :func:`write_deepstream_config` writes the matching
``config_infer_primary_retinakit.txt`` and labels file.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...config import ConfigError
from .._deps import require
from ..modules import EndToEndModule
from ..onnx import MAX_IR_VERSION, write_metadata
from .labels import class_labels, write_labels

__all__ = [
    "CONFIG_NAME",
    "DEEPSTREAM_OUTPUTS",
    "STOCK_PARSER",
    "STOCK_PARSER_LIB",
    "DeepStreamModule",
    "check_input_size",
    "deepstream_scale",
    "export_deepstream_onnx",
    "write_deepstream_config",
]

logger = logging.getLogger(__name__)

DEEPSTREAM_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
CONFIG_NAME = "config_infer_primary_retinakit.txt"
LABELS_NAME = "labels.txt"
STOCK_PARSER = "NvDsInferParseCustomBatchedNMSTLT"
STOCK_PARSER_LIB = "/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser.so"
STOCK_PARSER_MAX_OBJECTS = 200  # the parser's keep_top_k
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMAT = {"RGB": 0, "BGR": 1}


def deepstream_scale(pixel_std: Sequence[float]) -> tuple[float, list[float]]:
    """``(net_scale_factor, channel_factors)`` with ``net_scale_factor * channel_factors[c] = 1 / std[c]``.

    nvinfer scales all channels by one scalar; the scalar is 1 / the geometric mean of the stds
    and the graph multiplies channel ``c`` by the rest (all 1.0 when the stds are equal).
    """
    std = [float(s) for s in pixel_std]
    if any(s <= 0 for s in std):
        raise ConfigError(f"MODEL.PIXEL_STD must be positive for DeepStream's net-scale-factor, got {std}.")
    if len(set(std)) == 1:
        return 1.0 / std[0], [1.0] * len(std)
    scale = 1.0 / math.exp(sum(math.log(s) for s in std) / len(std))
    return scale, [1.0 / (s * scale) for s in std]


class DeepStreamModule(nn.Module):
    """The end-to-end graph in the layout of DeepStream's stock BatchedNMS parser.

    Input ``images [N, 3, H, W]`` float32 as nvinfer prepares it: ``(x - PIXEL_MEAN[c]) *
    net_scale_factor`` in ``INPUT.FORMAT`` order (see :func:`deepstream_scale`); the whole
    ``H x W`` is the image (nvinfer's padding, if any, is seen as image content).

    Returns ``num_detections [N, 1]`` int32, ``detection_boxes [N, D, 4]`` float32 XYXY divided
    by ``(W, H, W, H)``, ``detection_scores [N, D]`` float32 and ``detection_classes [N, D]``
    float32 (``-1`` in padding rows), ``D = max_detections``, rows by decreasing score.
    """

    postprocessor: Any  # an ExportablePostProcessor module
    model: Any  # a RetinaNet-like module (preprocessor, forward_features)
    channel_scale: Tensor

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.postprocessor = EndToEndModule(model).postprocessor  # checks that it is exportable
        self.model = model  # scope "model.backbone"/"model.head": what quantize_int8 treats as the trunk
        self.net_scale_factor, factors = deepstream_scale(self.model.preprocessor.pixel_std.flatten().tolist())
        self.needs_channel_scale = any(f != 1.0 for f in factors)
        self.register_buffer("channel_scale", torch.tensor(factors, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = images * self.channel_scale if self.needs_channel_scale else images
        h, w = int(images.shape[-2]), int(images.shape[-1])
        sizes = images.new_tensor([float(h), float(w)]).expand(images.shape[0], 2)
        num, boxes, scores, classes = self.postprocessor.forward_static(*self.model.forward_features(x), sizes)
        boxes = boxes / images.new_tensor([float(w), float(h), float(w), float(h)])
        return num.view(-1, 1), boxes, scores, classes.float()


def check_input_size(model: nn.Module, size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of ``size`` when both are positive multiples of the backbone's size divisibility, else ConfigError."""
    div = int(getattr(model.backbone, "size_divisibility", 32) or 32)
    if len(size) != 2 or any(int(s) <= 0 or int(s) % div for s in size):
        raise ConfigError(
            f"EXPORT.DEEPSTREAM.INPUT_SIZE must be (height, width), both positive multiples of the backbone's size "
            f"divisibility {div}; got {tuple(size)}."
        )
    return int(size[0]), int(size[1])


def export_deepstream_onnx(
    model: nn.Module,
    path: str,
    input_size: Sequence[int],
    *,
    opset: int = 18,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Export ``model`` as :class:`DeepStreamModule` to ``path``: fixed ``input_size (H, W)``, dynamic batch.

    Stores ``metadata`` plus ``mode="deepstream"``, ``input_size``, ``net_scale_factor`` and
    ``outputs`` in ``metadata_props["retinakit"]``. Returns ``path``.
    """
    onnx = require("onnx", "DeepStream ONNX export")
    require("onnxscript", "DeepStream ONNX export")
    from ...ops.onnx import custom_translation_table

    h, w = check_input_size(model, input_size)
    module = DeepStreamModule(model.eval()).eval()
    if module.postprocessor.max_detections > STOCK_PARSER_MAX_OBJECTS:
        logger.warning(
            f"TEST.DETECTIONS_PER_IMAGE={module.postprocessor.max_detections}: DeepStream's {STOCK_PARSER} keeps "
            f"at most {STOCK_PARSER_MAX_OBJECTS + 1} objects per frame."
        )
    example = torch.randn(2, 3, h, w)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=opset, input_names=["images"],
            output_names=list(DEEPSTREAM_OUTPUTS), dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}},
            custom_translation_table=custom_translation_table(), optimize=True, verbose=False,
        )
        if program is None:  # the dynamo exporter always returns a program; None is the legacy one's
            raise RuntimeError("torch.onnx.export(dynamo=True) returned no program.")
        program.save(path)
    proto = onnx.load(path)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    meta = dict(metadata or {})
    meta.update(mode="deepstream", opset=opset, outputs=list(DEEPSTREAM_OUTPUTS), input_size=[h, w],
                net_scale_factor=module.net_scale_factor, max_detections=int(module.postprocessor.max_detections))
    write_metadata(proto, meta)
    onnx.save(proto, path)
    return path


def _copy_into(src: str, folder: str) -> str:
    """Copy ``src`` into ``folder`` (unless already there); returns its base name."""
    dst = os.path.join(folder, os.path.basename(src))
    if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
    return os.path.basename(src)


def write_deepstream_config(
    folder: str,
    onnx_path: str,
    *,
    meta: dict[str, Any],
    pixel_mean: Sequence[float],
    precision: str = "fp32",
    calibration_cache: str | None = None,
    engine_path: str | None = None,
    batch_size: int = 1,
    maintain_aspect_ratio: bool = True,
    score_thresh: float = 0.05,
) -> str:
    """Write ``folder/config_infer_primary_retinakit.txt`` and ``folder/labels.txt``.

    Args:
        onnx_path: a :func:`export_deepstream_onnx` graph (its FP16/INT8 copy for those
            precisions); copied into ``folder`` (as are ``calibration_cache`` and ``engine_path``),
            and referenced by relative paths, which nvinfer resolves against the config's folder.
        meta: the graph's metadata (``input_size``, ``net_scale_factor``, ``num_classes``,
            ``input_format``, ``class_names``, ``max_detections``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (``network-mode`` 0, 2, 1); INT8 needs
            ``calibration_cache``.
        score_thresh: ``pre-cluster-threshold`` (the stock parser reads class 0's for all classes).

    Returns the config path.
    """
    if precision not in NETWORK_MODE:
        raise ConfigError(f"DeepStream precision must be one of {sorted(NETWORK_MODE)}, got {precision!r}.")
    if precision == "int8" and not calibration_cache:
        raise ConfigError("DeepStream INT8 (network-mode=1) needs the calibration cache (int8-calib-file).")
    fmt = str(meta.get("input_format", "RGB")).upper()
    if fmt not in COLOR_FORMAT:
        raise ConfigError(f"INPUT.FORMAT must be RGB or BGR for DeepStream's model-color-format, got {fmt!r}.")
    h, w = meta["input_size"]
    num_classes = int(meta["num_classes"])
    names = class_labels(meta.get("class_names"), num_classes)  # checked before anything is written
    os.makedirs(folder, exist_ok=True)
    labels = write_labels(os.path.join(folder, LABELS_NAME), names, num_classes)
    prop: dict[str, Any] = {
        "gpu-id": 0,
        "onnx-file": _copy_into(onnx_path, folder),
    }
    if engine_path:
        prop["model-engine-file"] = _copy_into(engine_path, folder)
    if precision == "int8":
        prop["int8-calib-file"] = _copy_into(str(calibration_cache), folder)
    prop.update({
        "labelfile-path": os.path.basename(labels),
        "batch-size": int(batch_size),
        "network-mode": NETWORK_MODE[precision],
        "network-type": 0,  # detector
        "process-mode": 1,  # primary (full frames)
        "gie-unique-id": 1,
        "infer-dims": f"3;{h};{w}",
        "net-scale-factor": repr(float(meta["net_scale_factor"])),
        "offsets": ";".join(repr(float(m)) for m in pixel_mean),
        "model-color-format": COLOR_FORMAT[fmt],
        "maintain-aspect-ratio": int(bool(maintain_aspect_ratio)),
        "symmetric-padding": 0,  # pad bottom/right, as retinakit pads
        "scaling-filter": 1,  # bilinear, as the test-time resize
        "num-detected-classes": num_classes,
        "output-blob-names": ";".join(DEEPSTREAM_OUTPUTS),
        "cluster-mode": 4,  # no clustering: the engine already ran NMS
        "parse-bbox-func-name": STOCK_PARSER,
        "custom-lib-path": STOCK_PARSER_LIB,
    })
    attrs = {"pre-cluster-threshold": repr(float(score_thresh)), "topk": int(meta.get("max_detections", 100))}
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, "w") as f:
        f.write("# nvinfer configuration written by retinakit (tools/deploy.py --deepstream); docs/deployment.md\n")
        for group, keys in (("property", prop), ("class-attrs-all", attrs)):
            f.write(f"[{group}]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()) + "\n")
    return path
