"""The exported graphs: thin ``nn.Module`` adapters around a built RetinaNet.

Both take ``images [N, 3, H, W]`` float32 in the 0-255 range (``INPUT.FORMAT`` channel order,
already resized, padded bottom/right to a multiple of the backbone's size divisibility) and
``image_sizes [N, 2]`` float32 ``(height, width)`` of the valid (unpadded) region of each
image. Everything else is the model's own code: its preprocessor normalises and zeroes the
padding (:meth:`~retinakit.modeling.meta_arch.preprocess.ImagePreprocessor.normalize_padded`),
:meth:`RetinaNet.forward_features` runs backbone, head and anchor generator, and the
end-to-end graph ends in the post-processor's static-shape path
(:meth:`~retinakit.modeling.postprocess.RetinaNetPostProcessor.forward_static`).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..config import ConfigError
from ..modeling.protocols import ExportablePostProcessor

__all__ = ["E2E_OUTPUTS", "EndToEndModule", "HeadsOnlyModule"]

E2E_OUTPUTS = ("num_dets", "boxes", "scores", "classes")


class _Exported(nn.Module):
    """Holds the model; ``outputs`` = per level ``cls_logits``, ``box_deltas`` and ``anchors``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in ("preprocessor", "forward_features"):
            if not hasattr(model, name):
                raise ConfigError(f"ONNX export needs a RetinaNet-like model with '{name}'; {type(model).__name__} has none.")
        self.model = model

    def outputs(self, images: Tensor, image_sizes: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return self.model.forward_features(self.model.preprocessor.normalize_padded(images, image_sizes))


class HeadsOnlyModule(_Exported):
    """Raw head outputs: ``cls_logits_i [N, A*K, H_i, W_i]`` then ``box_deltas_i [N, A*4, H_i, W_i]``."""

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        cls_logits, box_deltas, _ = self.outputs(images, image_sizes)
        return tuple(cls_logits) + tuple(box_deltas)


class EndToEndModule(_Exported):
    """Backbone + head + the post-processor's ``forward_static``, with fixed-size outputs.

    Returns ``num_dets [N]`` int32, ``boxes [N, D, 4]`` float32 XYXY in the network input
    coordinates (clipped to each image's ``image_sizes``), ``scores [N, D]`` float32 and
    ``classes [N, D]`` int32 (``-1`` in padding rows), ``D = max_detections``, rows by
    decreasing score. The post-processor must meet
    :class:`~retinakit.modeling.protocols.ExportablePostProcessor`; its ``check_exportable``
    runs here, so an unexportable setting fails before tracing with a message naming it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        pp = model.postprocessor
        if not isinstance(pp, ExportablePostProcessor):
            raise ConfigError(
                f"End-to-end ONNX export traces the post-processor's forward_static(), which {type(pp).__name__} "
                "(MODEL.POSTPROCESSOR.NAME) lacks: add check_exportable() and forward_static() "
                "(retinakit.modeling.protocols.ExportablePostProcessor, docs/custom_components.md) or export with "
                "mode='heads' (tools/deploy.py --mode heads) and post-process the raw outputs."
            )
        pp.check_exportable()
        self.postprocessor = pp

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls_logits, box_deltas, anchors = self.outputs(images, image_sizes)
        return self.postprocessor.forward_static(cls_logits, box_deltas, anchors, image_sizes)
