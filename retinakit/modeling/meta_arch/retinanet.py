"""The RetinaNet meta-architecture: backbone + anchors + head + losses + post-processing."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...config import CfgNode, configurable
from ...structures import ImageList, Instances, pairwise_iou
from ..anchor_generator import build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_coder import BOX_CODER_REGISTRY, build_box_coder
from ..heads import build_head
from ..levels import check_anchor_levels, check_head_in_features
from ..losses import build_loss
from ..matcher import MATCHER_REGISTRY, build_matcher, check_matcher_anchor_counts
from ..postprocess import POSTPROCESSOR_REGISTRY, build_postprocessor
from ..protocols import BoxCoder, Matcher, MatchInputs, PostProcessor
from .build import META_ARCH_REGISTRY
from .preprocess import ImagePreprocessor

__all__ = ["RetinaNet", "permute_to_N_HWA_K"]


def permute_to_N_HWA_K(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, A*K, H, W]`` -> ``[N, H*W*A, K]`` (location-major, anchor-minor)."""
    n, _, h, w = x.shape
    return x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


def _global_mean(value: float, device: torch.device) -> float:
    """Mean of ``value`` over distributed ranks (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


@META_ARCH_REGISTRY.register()
class RetinaNet(nn.Module):
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection").

    ``forward(batched_inputs)`` takes ``list[dict]`` with ``image`` (``[C, H, W]`` uint8 or
    float in 0-255, channels in ``INPUT.FORMAT`` order), optional ``height``/``width`` (the
    size to report detections in) and, in training, ``instances`` (``gt_boxes``,
    ``gt_classes`` and optional ``gt_ignore`` for crowd regions).
    """

    # Keys whose shape depends on the number of classes: skipped (with a warning) when
    # fine-tuning from a checkpoint trained with another class count.
    class_specific_keys: tuple[str, ...] = ("head.cls_score.",)
    # Training-only state in the state dict: checkpoints carry it (exact resume), weights
    # without it (older checkpoints, converted weights) load silently with its initial value.
    training_state_keys: tuple[str, ...] = ("loss_normalizer",)
    loss_normalizer: torch.Tensor

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: nn.Module,
        box_coder: BoxCoder,
        matcher: Matcher,
        cls_loss: nn.Module,
        reg_loss: nn.Module,
        postprocessor: PostProcessor,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        loss_normalizer_momentum: float = 0.9,
        resize_in_model: bool = False,
        min_size_train: Sequence[int] = (800,),
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        crowd_ignore_iou: float = 0.4,
    ) -> None:
        """
        Args:
            backbone: maps images ``[N, C, H, W]`` (normalised, padded) to named feature maps
                ``{name: [N, C_l, H_l, W_l]}``; its ``size_divisibility`` sets the padding.
            head: per-level features (list of ``[N, C, H_l, W_l]``) -> ``(cls_logits, box_deltas)``,
                lists of ``[N, A*K, H_l, W_l]`` and ``[N, A*4, H_l, W_l]``.
            head_in_features: names of the backbone outputs the head uses, in level order
                (``MODEL.RETINANET.IN_FEATURES``, e.g. ``["p3", ..., "p7"]``).
            anchor_generator: (features, image size ``(H, W)``) -> per level anchors
                ``[H_l*W_l*A, 4]`` XYXY, location-major, anchor-minor.
            box_coder: a :class:`~retinakit.modeling.protocols.BoxCoder`:
                ``encode(anchors [R, 4], boxes [R, 4]) -> [R, 4]``, ``decode(deltas [R, 4], anchors [R, 4]) -> [R, 4]``.
            matcher: a :class:`~retinakit.modeling.protocols.Matcher`:
                ``match(MatchInputs(anchors per level, gt_boxes [G, 4])) -> (matches [R] int64, labels [R] int8)``.
            cls_loss: ``(logits [P, K], one-hot targets [P, K]) -> summed loss`` over the
                ``P`` non-ignored anchors of the batch (the focal loss).
            reg_loss: ``(pred_deltas [F, 4], anchors [F, 4], gt_boxes [F, 4], box_coder) -> summed loss``
                over the ``F`` foreground anchors.
            postprocessor: a :class:`~retinakit.modeling.protocols.PostProcessor`:
                ``(cls_logits, box_deltas, anchors, image_sizes) -> list[Instances]``.
            num_classes: ``K``, foreground classes (the background is implicit).
            pixel_mean, pixel_std: per channel (``C`` values, 0-255 scale, ``INPUT.FORMAT`` order);
                images are normalised as ``(image - mean) / std``.
            loss_normalizer_momentum: momentum of the moving foreground-anchor count that
                normalises both losses (0 = this batch's count only).
            resize_in_model: resize images inside the model (short side ``min_size_*``, long
                side at most ``max_size_*``) instead of in the data loader.
            min_size_train: short-side sizes drawn from in training (with ``resize_in_model``).
            max_size_train: long-side limit in training (with ``resize_in_model``).
            min_size_test: short side in inference (with ``resize_in_model``).
            max_size_test: long-side limit in inference (with ``resize_in_model``).
            crowd_ignore_iou: anchors whose IoU with a crowd (``gt_ignore``) box is at least
                this, and that the matcher did not make foreground, are ignored in the losses
                (from the config: the lowest of ``MODEL.RETINANET.IOU_THRESHOLDS``).
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.anchor_generator = anchor_generator
        self.box_coder = BOX_CODER_REGISTRY.check_protocol(box_coder)
        self.matcher = MATCHER_REGISTRY.check_protocol(matcher)
        self.cls_loss = cls_loss
        self.reg_loss = reg_loss
        self.postprocessor = POSTPROCESSOR_REGISTRY.check_protocol(postprocessor)
        self.num_classes = num_classes
        self.loss_normalizer_momentum = loss_normalizer_momentum
        # Moving average of the foreground anchor count per batch (a scalar buffer, so that
        # it is saved and restored with the model); 100 is a typical starting value.
        self.register_buffer("loss_normalizer", torch.tensor(100.0))
        self.crowd_ignore_iou = float(crowd_ignore_iou)
        self.preprocessor = ImagePreprocessor(
            pixel_mean, pixel_std, backbone.size_divisibility, resize_in_model,
            min_size_train, max_size_train, min_size_test, max_size_test,
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.RETINANET.IN_FEATURES)
        check_head_in_features(cfg, backbone, in_features)
        feature_shapes = [shapes[f] for f in in_features]
        check_anchor_levels(cfg, in_features, [int(s.stride or 0) for s in feature_shapes])
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        box_coder = build_box_coder(cfg)
        matcher = build_matcher(cfg)
        strides = [int(s.stride or 0) for s in feature_shapes]
        check_matcher_anchor_counts(matcher, cfg, strides, list(anchor_generator.num_anchors), backbone.size_divisibility)  # type: ignore[arg-type]
        r = cfg.MODEL.RETINANET
        return dict(
            backbone=backbone,
            head=build_head(cfg, feature_shapes, list(anchor_generator.num_anchors)),  # type: ignore[arg-type]
            head_in_features=in_features,
            anchor_generator=anchor_generator,
            box_coder=box_coder,
            matcher=matcher,
            cls_loss=build_loss(cfg, r.CLS_LOSS_TYPE),
            reg_loss=build_loss(cfg, r.BBOX_REG_LOSS_TYPE),
            postprocessor=build_postprocessor(cfg, box_coder),
            num_classes=r.NUM_CLASSES,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            loss_normalizer_momentum=r.LOSS_NORMALIZER_MOMENTUM,
            resize_in_model=cfg.INPUT.RESIZE_IN_MODEL,
            min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
            max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
            min_size_test=cfg.INPUT.MIN_SIZE_TEST,
            max_size_test=cfg.INPUT.MAX_SIZE_TEST,
            crowd_ignore_iou=min(r.IOU_THRESHOLDS, default=0.4),
        )

    @property
    def device(self) -> torch.device:
        return self.preprocessor.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess_image(batched_inputs)
        cls_logits, box_deltas, anchors = self.inference_outputs(images)
        if self.training:
            gt = [self._ground_truth(x, size) for x, size in zip(batched_inputs, images.image_sizes)]
            return self.losses(anchors, cls_logits, box_deltas, gt)
        results = self.postprocessor(cls_logits, box_deltas, anchors, images.image_sizes)
        return [
            {"instances": self.rescale(r, x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))}
            for r, x in zip(results, batched_inputs)
        ]

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise (and resize, when configured) and pad the input images."""
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise TypeError("RetinaNet expects a non-empty list of dicts with an 'image' tensor each.")
        images = [x["image"].to(self.device, non_blocking=True) for x in batched_inputs]
        return self.preprocessor(images, self.training)

    def _ground_truth(self, item: dict, size: tuple[int, int]) -> Instances:
        if "instances" not in item:
            raise KeyError("RetinaNet in training mode needs 'instances' (gt_boxes, gt_classes) in every input dict.")
        inst: Instances = item["instances"].to(self.device)
        if tuple(inst.image_size) != tuple(size):  # resized inside the model
            h, w = inst.image_size
            boxes = inst.gt_boxes.clone()
            boxes.scale(size[1] / w, size[0] / h)
            fields = dict(inst.get_fields(), gt_boxes=boxes)
            inst = Instances(size, **fields)
        return inst

    @staticmethod
    def rescale(result: Instances, height: int, width: int) -> Instances:
        """Scale detections from the network input size to ``(height, width)``."""
        h, w = result.image_size
        boxes = result.pred_boxes.clone()
        if (h, w) != (height, width):
            boxes.scale(float(width) / w, float(height) / h)
        fields = dict(result.get_fields(), pred_boxes=boxes)
        return Instances((height, width), **fields)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def label_anchors(
        self, anchors: Sequence[torch.Tensor] | torch.Tensor, gt_instances: list[Instances]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification and box targets of every anchor, through the matcher's ``match``.

        Args:
            anchors: per level ``[R_l, 4]`` XYXY (a single ``[R, 4]`` tensor is one level).
            gt_instances: per image ``gt_boxes [G, 4]``, ``gt_classes [G]``, optional ``gt_ignore [G]``
                (crowd regions: never targets; anchors with IoU >= ``crowd_ignore_iou`` with one
                are ignored unless matched as foreground).

        Returns:
            ``labels [N, R]`` int64 (class, ``K`` = background, -1 = ignore) and matched
            ``boxes [N, R, 4]``.
        """
        levels = [anchors] if isinstance(anchors, torch.Tensor) else list(anchors)
        all_anchors = torch.cat(levels)
        labels, matched = [], []
        for inst in gt_instances:
            lbl, box = self._label_image(levels, all_anchors, inst)
            labels.append(lbl)
            matched.append(box)
        return torch.stack(labels), torch.stack(matched)

    def _label_image(
        self, levels: list[torch.Tensor], all_anchors: torch.Tensor, inst: Instances
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: ``labels [R]`` int64 and matched ``boxes [R, 4]`` (see :meth:`label_anchors`)."""
        boxes, classes = inst.gt_boxes.tensor.float(), inst.gt_classes.long()
        ignore = inst.gt_ignore.bool() if inst.has("gt_ignore") else torch.zeros_like(classes, dtype=torch.bool)
        real, real_cls = boxes[~ignore], classes[~ignore]
        matches, match_labels = self.matcher.match(MatchInputs(anchors=levels, gt_boxes=real))
        if len(real):
            lbl = real_cls[matches].clone()
            box = real[matches]
        else:
            lbl = torch.zeros_like(matches)
            box = torch.zeros_like(all_anchors)
        lbl[match_labels == 0] = self.num_classes
        lbl[match_labels == -1] = -1
        if ignore.any():
            near_crowd = pairwise_iou(boxes[ignore], all_anchors).max(dim=0).values >= self.crowd_ignore_iou
            lbl[near_crowd & (match_labels != 1)] = -1
        return lbl, box

    def losses(
        self,
        anchors: list[torch.Tensor],
        cls_logits: list[torch.Tensor],
        box_deltas: list[torch.Tensor],
        gt_instances: list[Instances],
    ) -> dict[str, torch.Tensor]:
        """Focal classification loss and box regression loss, normalised by foreground anchors."""
        all_anchors = torch.cat(anchors)
        labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        logits = torch.cat([permute_to_N_HWA_K(x, self.num_classes) for x in cls_logits], dim=1)
        deltas = torch.cat([permute_to_N_HWA_K(x, 4) for x in box_deltas], dim=1)
        valid = labels >= 0
        pos = valid & (labels != self.num_classes)
        num_pos = _global_mean(float(pos.sum().item()), labels.device)
        normalizer = self._loss_normalizer(num_pos)
        targets = F.one_hot(labels[valid], self.num_classes + 1)[:, :-1]
        loss_cls = self.cls_loss(logits[valid], targets)
        anchors_n = all_anchors.unsqueeze(0).expand_as(gt_boxes)
        loss_box = self.reg_loss(deltas[pos], anchors_n[pos], gt_boxes[pos], self.box_coder)
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}

    @torch.no_grad()
    def _loss_normalizer(self, num_pos: float) -> torch.Tensor | float:
        """In training, update the moving foreground count and return a copy of it (a 0-dim
        tensor, safe from later in-place updates); otherwise this batch's count."""
        if not self.training:
            return max(num_pos, 1.0)
        m = self.loss_normalizer_momentum
        self.loss_normalizer.mul_(m).add_((1 - m) * max(num_pos, 1.0))
        return self.loss_normalizer.clone()

    def inference_outputs(self, images: ImageList) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Raw per-level head outputs and anchors for a preprocessed batch (training, inference)."""
        return self.forward_features(images.tensor)

    def forward_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Normalised, padded ``images [N, C, H, W]`` -> per level ``cls_logits [N, A*K, H_l, W_l]``,
        ``box_deltas [N, A*4, H_l, W_l]`` and ``anchors [H_l*W_l*A, 4]`` (also what export traces)."""
        features = self.backbone(images)
        features = [features[f] for f in self.head_in_features]
        anchors = self.anchor_generator(features, tuple(images.shape[-2:]))
        cls_logits, box_deltas = self.head(features)
        return list(cls_logits), list(box_deltas), anchors
