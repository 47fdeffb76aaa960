"""Drawing: detections on images (PIL) and loss curves from ``metrics.json`` (matplotlib).

matplotlib is used through its object API with the Agg canvas: no pyplot global state,
no display needed, nothing configured at import.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["draw_instances", "plot_metrics", "read_metrics"]

_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def draw_instances(
    image: np.ndarray,
    instances: Any,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    scale: int = 1,
) -> Any:
    """A PIL image of ``image`` (``HxWx3`` uint8 RGB) with boxes, class names and scores.

    ``instances``: Instances with ``pred_boxes`` (``[N, 4]`` xyxy), ``scores`` ``[N]``,
    ``pred_classes`` ``[N]``, in the image's coordinates. ``scale`` enlarges small images.
    """
    from PIL import Image, ImageDraw

    pil = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pil)
    boxes = instances.pred_boxes.tensor.detach().float().cpu().numpy() * scale
    scores = instances.scores.detach().float().cpu().numpy()
    classes = instances.pred_classes.detach().cpu().numpy()
    for box, score, cls in zip(boxes, scores, classes):
        if score < score_thresh:
            continue
        color = _COLORS[int(cls) % len(_COLORS)]
        draw.rectangle([float(v) for v in box], outline=color, width=2)
        name = class_names[int(cls)] if class_names and int(cls) < len(class_names) else str(int(cls))
        label = f"{name} {score:.2f}"
        x0, y0 = float(box[0]), max(float(box[1]) - 11, 0.0)
        draw.rectangle([x0, y0, x0 + 6 * len(label), y0 + 10], fill=color)
        draw.text((x0 + 1, y0 - 1), label, fill=(255, 255, 255))
    return pil


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Rows of a ``metrics.json`` file (one JSON object per line; torn lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_metrics(metrics_json: str, out_png: str, keys: Sequence[str] = ("total_loss", "loss_cls", "loss_box_reg")) -> str:
    """Plot the loss curves (and ``lr`` on a second axis) of ``metrics_json`` into ``out_png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_json)
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k in keys:
        pts = [(r["iteration"], r[k]) for r in rows if k in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k, linewidth=1.5 if k == "total_loss" else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr = [(r["iteration"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        ax2 = ax.twinx()
        xs, ys = zip(*lr)
        ax2.plot(xs, ys, color="gray", linestyle="--", linewidth=0.8, label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png
