#!/usr/bin/env python
"""The quickstart (what `make demo` runs): train RetinaNet on the built-in "shapes" dataset,
evaluate it, and draw the results. Runs on a CPU in a few minutes.

    python tools/demo.py [--config-file configs/quickstart/retinanet_R10_shapes.yaml]
                         [--output-dir output/quickstart] [--fresh] [--check] [KEY VALUE ...]

Steps: (1) generate the dataset (once, cached), (2) train (an interrupted demo resumes;
--fresh starts over), (3) evaluate on shapes_val (COCO AP), (4) write a loss-curve PNG and
PNGs of predictions on validation images, (5) print where everything is.
--check exits with 1 when AP < 0.5 or AP50 < 0.8.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CFG = os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml")
TARGET = {"AP": 0.5, "AP50": 0.8}


def step(n: int, text: str, t0: float) -> None:
    print(f"\n=== [{n}/5] {text}  (t = {time.time() - t0:.0f}s)", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CFG)
    p.add_argument("--output-dir", default=os.path.join(REPO, "output", "quickstart"))
    p.add_argument("--fresh", action="store_true", help="delete the output dir and train from scratch")
    p.add_argument("--check", action="store_true", help="exit 1 if AP/AP50 miss the quickstart targets")
    p.add_argument("--num-images", type=int, default=8, help="validation images to draw")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    return p.parse_args(argv)


def build_cfg(args: argparse.Namespace) -> Any:
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["OUTPUT_DIR", args.output_dir, *args.opts])
    return cfg


def prepare_data(cfg: Any) -> None:
    from retinakit.data import DatasetCatalog

    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        t = time.time()
        n = len(DatasetCatalog.get(name))
        print(f"    {name}: {n} images ready ({time.time() - t:.1f}s)", flush=True)


def train(cfg: Any) -> Any:
    from retinakit.engine import DefaultTrainer

    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=True)
    if trainer.start_iter > 0:
        print(f"    resuming at iteration {trainer.start_iter} of {cfg.SOLVER.MAX_ITER} (use --fresh to start over)")
    trainer.train()
    return trainer


def draw_predictions(cfg: Any, model: Any, out_dir: str, n: int) -> list[str]:
    import torch

    from retinakit.data import (
        DatasetCatalog,
        MetadataCatalog,
        build_inference_preprocess,
        read_image,
    )
    from retinakit.utils.visualizer import draw_instances

    name = cfg.DATASETS.TEST[0]
    classes = MetadataCatalog.get(name).thing_classes
    pre = build_inference_preprocess(cfg)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    model.eval()
    with torch.inference_mode():
        for d in DatasetCatalog.get(name)[:n]:
            image = read_image(d["file_name"], "RGB")
            tensor, (h, w) = pre(image)
            out = model([{"image": tensor, "height": h, "width": w}])[0]["instances"]
            path = os.path.join(out_dir, f"val_{d['image_id']}.png")
            draw_instances(_as_hwc(image), out, classes, score_thresh=0.5, scale=3).save(path)
            paths.append(path)
    return paths


def _as_hwc(image: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).numpy() if image.shape[0] in (1, 3) else image.numpy()
    return np.asarray(image)


def _share_cores(cfg: Any) -> None:
    """One core per data-loader worker, the rest for the model's threads (unless the user set
    OMP_NUM_THREADS). More compute threads than free cores makes OpenMP spin and wait; the
    quickstart uses no worker, so every core computes (docs/benchmarks.md)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.DATALOADER.NUM_WORKERS))
    print(f"    {torch.get_num_threads()} compute thread(s), {cfg.DATALOADER.NUM_WORKERS} data worker(s), "
          f"{os.cpu_count()} CPU cores", flush=True)


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()
    args = parse(argv)
    from retinakit.config import ConfigError
    from retinakit.engine import DefaultTrainer, default_setup

    try:
        cfg = build_cfg(args)
    except ConfigError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.fresh and os.path.isdir(cfg.OUTPUT_DIR):
        shutil.rmtree(cfg.OUTPUT_DIR)
    default_setup(cfg)
    out = os.path.abspath(cfg.OUTPUT_DIR)
    _share_cores(cfg)

    step(1, "Preparing the built-in 'shapes' dataset (generated once, then cached)", t0)
    prepare_data(cfg)

    step(2, f"Training {cfg.SOLVER.MAX_ITER} iterations of {cfg.SOLVER.IMS_PER_BATCH} images (progress every {cfg.SOLVER.LOG_PERIOD})", t0)
    trainer = train(cfg)
    train_done = time.time()

    step(3, f"Evaluating on {', '.join(cfg.DATASETS.TEST)} (COCO AP)", t0)
    ev = [h for h in trainer.hooks if type(h).__name__ == "EvalHook"]
    flat: dict[str, float] = dict(ev[0].last_results) if ev else {}
    if not flat:  # nothing was trained in this call (already complete): evaluate now
        from retinakit.engine.hooks import flatten_results

        flat = flatten_results(DefaultTrainer.test(cfg, trainer.model))

    step(4, "Drawing the loss curve and predictions on validation images", t0)
    from retinakit.utils.visualizer import plot_metrics

    curve = plot_metrics(os.path.join(out, "metrics.json"), os.path.join(out, "loss_curve.png"))
    preds = draw_predictions(cfg, trainer.model, os.path.join(out, "predictions"), args.num_images)

    step(5, "Done", t0)
    ap, ap50 = flat.get("bbox/AP", 0.0), flat.get("bbox/AP50", 0.0)
    ok = ap >= TARGET["AP"] and ap50 >= TARGET["AP50"]
    print(f"    AP = {ap:.3f}   AP50 = {ap50:.3f}   AP75 = {flat.get('bbox/AP75', 0.0):.3f}   "
          f"(quickstart target: AP >= {TARGET['AP']}, AP50 >= {TARGET['AP50']}: {'reached' if ok else 'NOT reached'})")
    print(f"    total time {time.time() - t0:.0f}s (training finished at {train_done - t0:.0f}s)")
    print(f"    output dir:    {out}")
    print(f"    model:         {os.path.join(out, 'model_final.pth')}")
    print(f"    metrics:       {os.path.join(out, 'metrics.json')}  (TensorBoard: tensorboard --logdir {out})")
    print(f"    loss curve:    {curve}")
    print(f"    predictions:   {os.path.dirname(preds[0]) if preds else '-'} ({len(preds)} PNGs)")
    print(f"    detections:    {os.path.join(out, 'inference', cfg.DATASETS.TEST[0], 'coco_instances_results.json')}")
    print(f"    log:           {os.path.join(out, 'log.txt')}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
