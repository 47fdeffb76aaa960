"""ONNX export of a RetinaNet: end-to-end (with NMS) or heads-only.

``export_onnx`` uses ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
exporter). The legacy TorchScript exporter is used only when asked for
(``legacy=True`` / ``EXPORT.LEGACY_EXPORTER``) as a fallback for old torch versions; it
cannot translate the NMS op and therefore only supports ``mode="heads"``.
Batch, height and width are dynamic. Deployment metadata (config, mode, sizes) is stored
in the model's ``metadata_props`` so that :func:`retinakit.export.load_predictor` needs
no config file.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch import nn

from ._deps import require
from .modules import E2E_OUTPUTS, EndToEndModule, HeadsOnlyModule

__all__ = ["MAX_IR_VERSION", "export_onnx", "read_metadata", "write_metadata"]

logger = logging.getLogger(__name__)

# onnxruntime 1.31 reads IR version <= 13; TensorRT 10 parsers read IR 10.
MAX_IR_VERSION = 10
META_KEY = "retinakit"


def _example_inputs(model: nn.Module, batch: int, height: int, width: int) -> tuple:
    """Random ``images [B, 3, H, W]`` and ``image_sizes [B, 2]``; ``B >= 2``, because torch.export
    specialises a dimension of size 1 and the exported batch must stay dynamic."""
    batch = max(2, int(batch))
    div = max(1, int(getattr(model.backbone, "size_divisibility", 32) or 32))
    h = -(-height // div) * div
    w = -(-width // div) * div
    images = torch.rand(batch, 3, h, w) * 255.0
    sizes = torch.tensor([[float(height), float(width)]] * batch)
    return images, sizes


def output_names(model: nn.Module, mode: str) -> list[str]:
    """Named outputs of the exported graph."""
    if mode == "e2e":
        return list(E2E_OUTPUTS)
    n = len(model.head_in_features)
    return [f"cls_logits_{i}" for i in range(n)] + [f"box_deltas_{i}" for i in range(n)]


def export_onnx(
    model: nn.Module,
    path: str,
    *,
    mode: str = "e2e",
    opset: int = 18,
    example_size: tuple = (2, 320, 320),
    metadata: dict[str, Any] | None = None,
    legacy: bool = False,
) -> str:
    """Export ``model`` (a built ``RetinaNet``, eval mode) to ``path``.

    Args:
        mode: ``"e2e"``: inputs ``images [N, 3, H, W]`` float32 0-255 and ``image_sizes
            [N, 2]`` float32 ``(h, w)``; outputs ``num_dets [N]`` int32, ``boxes [N, D, 4]``,
            ``scores [N, D]``, ``classes [N, D]`` int32. ``"heads"``: same inputs; outputs
            ``cls_logits_i [N, A*K, H_i, W_i]`` and ``box_deltas_i [N, A*4, H_i, W_i]`` per level.
        opset: ONNX opset (>= 18).
        example_size: ``(batch, height, width)`` of the tracing example (a batch below 2 is traced
            as 2); all three stay dynamic.
        metadata: JSON-serialisable dict stored in ``metadata_props["retinakit"]``.
        legacy: use the TorchScript exporter (``mode="heads"`` only).

    Returns:
        ``path``.
    """
    onnx = require("onnx", "ONNX export")
    if mode not in ("e2e", "heads"):
        raise ValueError(f"mode must be 'e2e' or 'heads', got {mode!r}.")
    model = model.eval()
    wrapper = (EndToEndModule(model) if mode == "e2e" else HeadsOnlyModule(model)).eval()
    images, sizes = _example_inputs(model, *example_size)
    names = output_names(model, mode)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        if legacy:
            if mode == "e2e":
                raise ValueError("The legacy exporter cannot translate NMS: use mode='heads' or the dynamo exporter.")
            torch.onnx.export(
                wrapper, (images, sizes), path, dynamo=False, opset_version=opset,
                input_names=["images", "image_sizes"], output_names=names,
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"},
                              **{n: {0: "batch"} for n in names}},
            )
        else:
            require("onnxscript", "ONNX export")
            from ..ops.onnx import custom_translation_table

            batch, height, width = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim.AUTO, torch.export.Dim.AUTO
            program = torch.onnx.export(
                wrapper, (images, sizes), dynamo=True, opset_version=opset,
                input_names=["images", "image_sizes"], output_names=names,
                dynamic_shapes={"images": {0: batch, 2: height, 3: width}, "image_sizes": {0: batch}},
                custom_translation_table=custom_translation_table(), optimize=True, verbose=False,
            )
            program.save(path)
    proto = onnx.load(path)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    meta = dict(metadata or {})
    meta.update(mode=mode, opset=opset, outputs=names)
    if mode == "e2e":  # the graph's TopK / NMS sizes, checked against TensorRT's limits by build_engine
        sizes = {k: getattr(model.postprocessor, k, None) for k in ("topk_candidates", "max_detections")}
        if None not in sizes.values():
            meta.update(num_levels=len(model.head_in_features), **sizes)
    write_metadata(proto, meta)
    onnx.save(proto, path)
    return path


def write_metadata(proto: Any, meta: dict[str, Any]) -> None:
    """Store ``meta`` (JSON) in ``proto.metadata_props["retinakit"]`` (replacing an old entry)."""
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == META_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def read_metadata(proto_or_path: Any) -> dict[str, Any]:
    """The retinakit metadata dict of an ONNX model (``{}`` when absent)."""
    onnx = require("onnx", "reading ONNX metadata")
    proto = onnx.load(proto_or_path, load_external_data=False) if isinstance(proto_or_path, str) else proto_or_path
    for p in proto.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    return {}
