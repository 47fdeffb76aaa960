"""Coverage report: per-box best anchor IoU and box size, tables by box size."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["COCO_BUCKETS", "FINE_EDGES", "AnchorCoverageReport"]

# Box size = sqrt(area) in pixels of the resized image the anchors see.
COCO_BUCKETS: tuple[tuple[str, float, float], ...] = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))
FINE_EDGES: tuple[float, ...] = (0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, math.inf)


@dataclass
class AnchorCoverageReport:
    """Per-box best anchor IoU and box size; coverage tables derived from them.

    ``best_iou [G]``, ``box_size [G]`` (sqrt(area) after resizing), ``threshold``: the
    matcher's foreground IoU; ``anchors_per_location``: per level.
    """

    best_iou: torch.Tensor
    box_size: torch.Tensor
    threshold: float
    anchors_per_location: list[int]
    label: str = ""

    @property
    def num_boxes(self) -> int:
        return int(self.best_iou.numel())

    @property
    def coverage(self) -> float:
        """Fraction of boxes with an anchor at IoU >= threshold (nan without boxes)."""
        return float((self.best_iou >= self.threshold).float().mean()) if self.num_boxes else float("nan")

    @property
    def mean_best_iou(self) -> float:
        return float(self.best_iou.mean()) if self.num_boxes else float("nan")

    def rows(self) -> list[tuple[str, int, float, float]]:
        """``(bucket, boxes, coverage, mean best IoU)``: all, COCO small/medium/large, finer bins."""
        buckets = [("all", 0.0, math.inf), *COCO_BUCKETS]
        buckets += [(f"[{lo:g}, {hi:g})" if hi != math.inf else f">= {lo:g}", lo, hi) for lo, hi in zip(FINE_EDGES[:-1], FINE_EDGES[1:])]
        out = []
        for name, lo, hi in buckets:
            m = (self.box_size >= lo) & (self.box_size < hi)
            n = int(m.sum())
            cov = float((self.best_iou[m] >= self.threshold).float().mean()) if n else float("nan")
            miou = float(self.best_iou[m].mean()) if n else float("nan")
            out.append((name, n, cov, miou))
        return out

    def table(self, other: AnchorCoverageReport | None = None) -> str:
        """A text table (tabulate); with ``other``, its columns side by side."""
        from tabulate import tabulate

        a = self.label or "anchors"
        headers = ["box size (px)", "boxes", f"coverage ({a})", f"mean best IoU ({a})"]
        rows = [list(r) for r in self.rows()]
        if other is not None:
            b = other.label or "other"
            headers += [f"coverage ({b})", f"mean best IoU ({b})"]
            for r, o in zip(rows, other.rows()):
                r += [o[2], o[3]]
        return tabulate(rows, headers=headers, floatfmt=".3f", missingval="-")

    def summary(self) -> str:
        return (
            f"{self.coverage:.1%} of {self.num_boxes} GT boxes have an anchor with IoU >= {self.threshold:g} "
            f"(mean best IoU {self.mean_best_iou:.3f})"
        )
