"""train: training images/s of retinakit vs torchvision's RetinaNet trained by a plain loop.

    python tools/benchmark.py train --config-file configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml
    python tools/benchmark.py train --config-file CFG --batch 4 --size 320 --iters 5 --repeats 3 [KEY VALUE ...]

Both models have the same architecture (torchvision's retinanet_resnet50_fpn v1 layout built
with FrozenBN, trainable layers 3 == FREEZE_AT 2, P6/P7 from P5; retinakit from the config,
which should be the torchvision-equivalent one), the same number of classes, the same input
images (``--batches`` batches of the training set, loaded once and kept in memory so data
loading is not timed), the same image size (resize inside the model to ``--size``), batch
size and SGD settings. retinakit runs through its trainer (SimpleTrainer/AMPTrainer with
``SOLVER.AMP.*``), torchvision through ``loss = sum(model(images, targets).values());
loss.backward(); optimizer.step()``. After a warm-up, the two alternate in timed windows of
``--iters`` iterations (``--repeats`` windows each), so background load hits both alike;
the report gives median images/s, the spread (min-max) and the retinakit/torchvision ratio.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", default="configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml")
    p.add_argument("--dataset", default="shapes_train", help="registered training dataset")
    p.add_argument("--batch", type=int, default=2, help="images per iteration (both models)")
    p.add_argument("--size", type=int, default=320, help="shortest image side inside the model")
    p.add_argument("--max-size", type=int, default=0, help="longest side limit (default: 5/3 x size)")
    p.add_argument("--batches", type=int, default=8, help="distinct batches kept in memory")
    p.add_argument("--iters", type=int, default=5, help="iterations per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU) for both")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")


def _cfg(args: argparse.Namespace) -> Any:
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    max_size = args.max_size or int(args.size * 5 / 3)
    cfg.merge_from_list(
        ["DATASETS.TRAIN", (args.dataset,), "SOLVER.IMS_PER_BATCH", args.batch, "INPUT.RESIZE_IN_MODEL", True,
         "INPUT.MIN_SIZE_TRAIN", (args.size,), "INPUT.MAX_SIZE_TRAIN", max_size, "INPUT.RANDOM_FLIP", "none",
         "DATALOADER.NUM_WORKERS", 0, "SEED", 0, *args.opts]
    )
    from retinakit.data import MetadataCatalog

    cfg.MODEL.RETINANET.NUM_CLASSES = len(MetadataCatalog.get(args.dataset).thing_classes)
    return cfg


def _batches(cfg: Any, n: int) -> list[list[dict]]:
    from retinakit.data import build_detection_train_loader

    return list(itertools.islice(iter(build_detection_train_loader(cfg)), n))


def _torchvision_model(cfg: Any, device: Any) -> Any:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    depth = cfg.MODEL.RESNETS.DEPTH
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d,
        trainable_layers=5 - cfg.MODEL.BACKBONE.FREEZE_AT,  # FREEZE_AT 2 (stem + res2) == 3 trainable
        returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256),
    )
    return RetinaNet(
        backbone, cfg.MODEL.RETINANET.NUM_CLASSES, min_size=cfg.INPUT.MIN_SIZE_TRAIN[0], max_size=cfg.INPUT.MAX_SIZE_TRAIN
    ).to(device)


def _tv_inputs(batch: list[dict], device: Any) -> tuple:
    images = [d["image"].to(device).float() / 255.0 for d in batch]
    targets = [
        {"boxes": d["instances"].gt_boxes.tensor.to(device), "labels": d["instances"].gt_classes.to(device)} for d in batch
    ]
    return images, targets


class _TorchvisionLoop:
    """The plain training loop a torchvision user writes."""

    def __init__(self, model: Any, batches: list[list[dict]], lr: float, amp: bool, device: Any) -> None:
        import torch

        self.model, self.device, self.amp = model.train(), device, amp
        self.data = itertools.cycle([_tv_inputs(b, device) for b in batches])
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def run(self, n: int) -> None:
        import torch

        for _ in range(n):
            images, targets = next(self.data)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
                losses = self.model(images, targets)
            loss = sum(losses.values())
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()


class _RetinakitLoop:
    """retinakit's trainer (no hooks) on the same in-memory batches."""

    def __init__(self, cfg: Any, batches: list[list[dict]], amp: bool, device: Any) -> None:
        import torch

        from retinakit.engine import AMPTrainer, SimpleTrainer, build_optimizer
        from retinakit.modeling import build_model

        model = build_model(cfg)
        opt = build_optimizer(cfg, model)
        data = itertools.cycle(batches)
        if amp:
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            self.trainer = AMPTrainer(model, data, opt, dtype=dtype)
        else:
            self.trainer = SimpleTrainer(model, data, opt)
        self.done = 0

    def run(self, n: int) -> None:
        self.trainer.train(self.done, self.done + n)
        self.done += n


def main(args: argparse.Namespace) -> int:
    import logging

    import torch

    logging.getLogger("retinakit").setLevel(logging.WARNING)
    cfg = _cfg(args)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.MODEL.DEVICE in ("auto", "cuda") else "cpu")
    cfg.MODEL.DEVICE = str(device)
    batches = _batches(cfg, args.batches)
    torch.manual_seed(0)
    loops: dict[str, Any] = {
        "torchvision": _TorchvisionLoop(_torchvision_model(cfg, device), batches, cfg.SOLVER.BASE_LR, args.amp, device),
        "retinakit": _RetinakitLoop(cfg, batches, args.amp, device),
    }
    load_before = os.getloadavg()[0]
    for loop in loops.values():
        loop.run(args.warmup)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loop.run(args.iters)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(args.iters * args.batch / (time.perf_counter() - t0))
    cpu = f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    dev = torch.cuda.get_device_name() if device.type == "cuda" else cpu
    print(
        f"training: R{cfg.MODEL.RESNETS.DEPTH}-FPN RetinaNet, {cfg.MODEL.RETINANET.NUM_CLASSES} classes, batch {args.batch}, "
        f"shortest side {args.size} (max {cfg.INPUT.MAX_SIZE_TRAIN}), AMP {'on' if args.amp else 'off'}, {args.dataset}; "
        f"{dev}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    base = statistics.median(rates["torchvision"])
    print(f"{'implementation':<12} {'images/s (median)':>18} {'min':>8} {'max':>8}  ratio vs torchvision")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<12} {med:>18.2f} {min(r):>8.2f} {max(r):>8.2f}  {med / base:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rates": rates, "args": {k: v for k, v in vars(args).items() if k != "func"}}, f, indent=1)
    return 0
