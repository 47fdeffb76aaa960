"""What the analysis reads: the ground-truth boxes as the anchors see them (resized like the
data pipeline or the model's preprocessor), and the model's own anchor generator,
feature-map sizes and matcher foreground threshold."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...config.config import ConfigError
from ...data.transforms import resized_shape
from ...modeling import DefaultAnchorGenerator, build_model
from ...modeling.meta_arch.preprocess import resized_size

__all__ = ["AnchorSetup", "GroundTruth", "build_cpu_model", "collect_ground_truth"]


@dataclass
class GroundTruth:
    """Non-crowd GT boxes after resizing, with the padded input size of their image.

    ``boxes [G, 4]`` XYXY float32 in resized-image pixels; ``padded_hw [G, 2]`` int64.
    """

    boxes: torch.Tensor
    padded_hw: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _short_sizes(cfg: Any, mode: str) -> tuple[list[int], int]:
    """Short-side sizes of ``mode`` (low/middle/high for "range" sampling) and the max size."""
    if mode == "test":
        return [int(cfg.INPUT.MIN_SIZE_TEST)], int(cfg.INPUT.MAX_SIZE_TEST)
    if mode != "train":
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")
    sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) == 2:
        sizes = sorted({sizes[0], (sizes[0] + sizes[1]) // 2, sizes[1]})
    return sizes, int(cfg.INPUT.MAX_SIZE_TRAIN)


def _resized_hw(h: int, w: int, short: int, max_size: int, in_model: bool) -> tuple[int, int]:
    """Output size of the data pipeline's resize, or of the model's preprocessor (``INPUT.RESIZE_IN_MODEL``)."""
    return resized_size(h, w, short, max_size) if in_model else resized_shape(h, w, short, max_size)


def _sample(dicts: list[dict[str, Any]], max_images: int | None, seed: int) -> list[dict[str, Any]]:
    """A fixed random subset of ``max_images`` dataset dicts (all of them without a limit), in order."""
    if max_images is None or not 0 < max_images < len(dicts):
        return dicts
    idx = torch.randperm(len(dicts), generator=torch.Generator().manual_seed(seed))[:max_images]
    return [dicts[i] for i in sorted(idx.tolist())]


def _resized_boxes(b: torch.Tensor, hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """XYXY boxes ``[N, 4]`` (float64) of an ``hw`` image scaled to ``out_hw``, clipped, empty ones dropped."""
    (h, w), (oh, ow) = hw, out_hw
    r = b * torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float64)
    r[:, 0::2] = r[:, 0::2].clamp(0, ow)
    r[:, 1::2] = r[:, 1::2].clamp(0, oh)
    return r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]


def collect_ground_truth(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], size_divisibility: int, *, mode: str = "train",
    max_images: int | None = None, seed: int = 0,
) -> GroundTruth:
    """GT boxes of ``dataset_dicts`` (XYXY, ``iscrowd`` left out) at every input size of ``mode``.

    ``mode="train"``: each image once per ``INPUT.MIN_SIZE_TRAIN`` choice (low/middle/high
    for "range" sampling); ``"test"``: at ``MIN_SIZE_TEST``. Flips are ignored. With
    ``max_images`` a fixed random subset (``seed``) of the images is used.
    """
    shorts, max_size = _short_sizes(cfg, mode)
    d = max(int(size_divisibility), 1)
    boxes, padded = [], []
    for rec in _sample(list(dataset_dicts), max_images, seed):
        h, w = rec.get("height"), rec.get("width")
        if not h or not w:
            raise ValueError(f"Dataset dict of image {rec.get('image_id', '?')} has no height/width; load it with retinakit.data.")
        annos = [a for a in rec.get("annotations", []) if not a.get("iscrowd", 0)]
        if not annos:
            continue
        b = torch.tensor([a["bbox"] for a in annos], dtype=torch.float64).reshape(-1, 4)
        for short in shorts:
            oh, ow = _resized_hw(int(h), int(w), short, max_size, bool(cfg.INPUT.RESIZE_IN_MODEL))
            r = _resized_boxes(b, (h, w), (oh, ow))
            boxes.append(r.float())
            padded.append(torch.tensor([[-(-oh // d) * d, -(-ow // d) * d]], dtype=torch.int64).expand(len(r), 2))
    if not boxes:
        return GroundTruth(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.int64))
    return GroundTruth(torch.cat(boxes), torch.cat(padded))


def build_cpu_model(cfg: Any) -> torch.nn.Module:
    """``build_model`` of ``cfg`` on the CPU (its config checks, e.g. one anchor size list per level
    from :func:`retinakit.modeling.levels.check_anchor_levels`, raise ``ConfigError``)."""
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    return build_model(cpu_cfg)


@dataclass
class AnchorSetup:
    """The model's anchor generator and how to get feature-map sizes for an input size."""

    generator: torch.nn.Module
    backbone: torch.nn.Module
    in_features: list[str]
    strides: list[int]
    size_divisibility: int
    _grids: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    _meta: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> AnchorSetup:
        """Take backbone, ``head_in_features`` and anchor generator from the model that
        ``build_model`` assembles from ``cfg`` (on the CPU)."""
        return cls.from_model(build_cpu_model(cfg), cfg)

    @classmethod
    def from_model(cls, model: Any, cfg: Any) -> AnchorSetup:
        """Backbone, ``head_in_features`` and anchor generator of a built ``model``."""
        missing = [a for a in ("backbone", "head_in_features", "anchor_generator") if not hasattr(model, a)]
        if missing:
            raise ConfigError(f"Anchor analysis reads {missing} of the model; MODEL.META_ARCHITECTURE "
                              f"{cfg.MODEL.META_ARCHITECTURE!r} has no such attributes.")
        backbone = model.backbone.eval()
        in_features = list(model.head_in_features)
        shapes = backbone.output_shape()
        strides = [int(shapes[f].stride or 0) for f in in_features]
        return cls(model.anchor_generator, backbone, in_features, strides, int(backbone.size_divisibility))

    def grid_sizes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map ``(h, w)`` per level for an input of ``padded_hw`` (shape-only forward on "meta")."""
        key = (int(padded_hw[0]), int(padded_hw[1]))
        if key not in self._grids:
            try:
                if self._meta is None:
                    self._meta = copy.deepcopy(self.backbone).to("meta")
                with torch.no_grad():
                    out = self._meta(torch.empty(1, 3, *key, device="meta"))
            except Exception:  # noqa: BLE001 - a backbone whose ops have no meta kernel: run it for real once
                with torch.no_grad():
                    out = self.backbone(torch.zeros(1, 3, *key))
            self._grids[key] = [tuple(int(v) for v in out[f].shape[-2:]) for f in self.in_features]  # type: ignore[misc]
        return self._grids[key]

    def anchors(self, padded_hw: tuple[int, int], generator: Any = None) -> torch.Tensor:
        """All anchors ``[A, 4]`` (XYXY) of an input of ``padded_hw``, from the anchor generator."""
        feats = [torch.empty(1, 0, h, w) for h, w in self.grid_sizes(padded_hw)]
        return torch.cat((generator or self.generator)(feats, tuple(padded_hw)))


def _grid_tensors(setup: AnchorSetup, gt: GroundTruth, strides_from_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box and level: grid ``[G, L, 2]`` (h, w) and stride ``[G, L, 2]`` (y, x)."""
    n_lvl = len(setup.strides)
    grid = torch.zeros(len(gt), n_lvl, 2)
    stride = torch.zeros(len(gt), n_lvl, 2)
    if len(gt) == 0:
        return grid, stride
    sizes, inverse = torch.unique(gt.padded_hw, dim=0, return_inverse=True)
    for i, (ph, pw) in enumerate(sizes.tolist()):
        g = torch.tensor(setup.grid_sizes((ph, pw)), dtype=torch.float32)
        s = g.new_tensor([[ph, pw]]) // g if strides_from_image else g.new_tensor(setup.strides)[:, None].expand(-1, 2)
        grid[inverse == i] = g
        stride[inverse == i] = s
    return grid, stride


def _fg_threshold(cfg: Any) -> float:
    """The matcher's foreground IoU threshold, ``MODEL.RETINANET.IOU_THRESHOLDS[-1]``."""
    th = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    if not th:
        raise ConfigError("MODEL.RETINANET.IOU_THRESHOLDS is empty; anchor coverage needs the foreground threshold.")
    return float(th[-1])


def _is_grid_generator(gen: Any) -> bool:
    """Whether ``gen`` places the same cell anchors on a regular grid (closed-form best IoU)."""
    return isinstance(gen, DefaultAnchorGenerator)
