"""ODTK (NVIDIA retinanet-examples) command line -> retinakit config: the one mapping table.

Every flag of ``retinakit train|infer|export`` is one :class:`Flag` row of :data:`FLAGS`: the
subcommand, how argparse reads it (ODTK's nargs, type and default), what it sets (config keys
through ``to_config(value, args) -> [(KEY, VALUE), ...]``, or the argument of ``tools/*.py``
it stands for) and its help text. The parsers, the config each run builds and the table of
docs/odtk_migration.md (:func:`markdown_table`) all read this table, so they cannot differ.

:func:`odtk_model` gives the config values of ODTK's RetinaNet for a backbone name (the
same architecture as ``configs/converted/odtk_retinanet_R_*_FPN.yaml``: anchors of size
``stride * 4 * 2^(i/3)`` with ratios ``[1, 2, 0.5]`` centred at ``(i + 0.5) * stride``, "+1"
box coding, P6 from C5, no low-quality matches, smooth L1 of beta 0.11 normalised by the
batch's foreground count) plus ODTK's training recipe (ImageNet backbone, SGD momentum 0.9,
warmup from 0.1 x LR, mixed precision, multi-step decay).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..checkpoint.converters.odtk import BACKBONES as ODTK_RESNETS
from ..checkpoint.converters.odtk import DEFAULT_RATIOS, anchor_config
from ..utils.errors import UserInputError

__all__ = [
    "BACKBONES", "FLAGS", "UNSUPPORTED", "Flag", "OdtkFlagError", "add_flags", "check_unsupported", "default_logdir",
    "flag_overrides", "flags_of", "markdown_table", "odtk_batch", "odtk_model",
]

Overrides = list[tuple[str, Any]]


class OdtkFlagError(ValueError, UserInputError):
    """An ODTK flag that retinakit does not support, or a flag value it cannot use."""


# ----------------------------------------------------------------------------- backbones
_TV = "https://download.pytorch.org/models/"
# ImageNet weights of torchvision (what ODTK initialises its backbones with).
_IMAGENET = {
    "ResNet18FPN": "resnet18-f37072fd.pth", "ResNet34FPN": "resnet34-b627a593.pth",
    "ResNet50FPN": "resnet50-0676ba61.pth", "ResNet101FPN": "resnet101-63fe2227.pth",
    "ResNet152FPN": "resnet152-394f9c45.pth", "ResNeXt50_32x4dFPN": "resnext50_32x4d-7cdf4587.pth",
    "ResNeXt101_32x8dFPN": "resnext101_32x8d-8ba56ff5.pth",
    "MobileNetV3LargeFPN": "mobilenet_v3_large-8738ca79.pth", "MobileNetV3SmallFPN": "mobilenet_v3_small-047dcff4.pth",
}


def _resnet(name: str) -> Overrides:
    depth, groups, width = ODTK_RESNETS[name]
    return [
        ("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"), ("MODEL.RESNETS.DEPTH", depth),
        ("MODEL.RESNETS.NUM_GROUPS", groups), ("MODEL.RESNETS.WIDTH_PER_GROUP", width),
        ("MODEL.RESNETS.NORM", "FrozenBN"), ("MODEL.RESNETS.STRIDE_IN_1X1", False), ("MODEL.FPN.TOP_BLOCK_IN", "c5"),
    ]


def _mobilenet(variant: str) -> Callable[[str], Overrides]:
    def overrides(name: str) -> Overrides:
        return [("MODEL.BACKBONE.NAME", "build_retinanet_mobilenet_v3_fpn_backbone"), ("MODEL.MOBILENETV3.VARIANT", variant),
                ("MODEL.FPN.TOP_BLOCK_IN", "p5")]
    return overrides


def _resnet10(name: str) -> Overrides:
    return [("CUSTOM_IMPORTS", ["projects.ResNet10.resnet10"]), ("MODEL.BACKBONE.NAME", "build_retinanet_fpn_backbone"),
            ("MODEL.FPN.BOTTOM_UP", "build_resnet10_backbone"), ("MODEL.FPN.TOP_BLOCK_IN", "p5")]


# --backbone name -> config values of its bottom-up network and FPN.
BACKBONES: dict[str, Callable[[str], Overrides]] = {
    **dict.fromkeys(ODTK_RESNETS, _resnet),
    "MobileNetV3LargeFPN": _mobilenet("large"),
    "MobileNetV3SmallFPN": _mobilenet("small"),
    "ResNet10FPN": _resnet10,  # projects/ResNet10 (a checkout's projects/ on PYTHONPATH); no ImageNet weights
}


def odtk_model(backbone: str) -> Overrides:
    """Config values of ODTK's RetinaNet with ``backbone`` and its training recipe."""
    if backbone not in BACKBONES:
        raise OdtkFlagError(f"--backbone {backbone} is not available; choose one of: {', '.join(BACKBONES)}.")
    anchors = anchor_config(DEFAULT_RATIOS, [4 * 2 ** (i / 3) for i in range(3)])
    return [
        *BACKBONES[backbone](backbone),
        ("MODEL.WEIGHTS", _TV + _IMAGENET[backbone] if backbone in _IMAGENET else ""),
        ("MODEL.BACKBONE.FREEZE_AT", 0),
        ("MODEL.FPN.NORM", ""),
        ("MODEL.FPN.OUT_CHANNELS", 256),
        ("MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53]),
        ("MODEL.PIXEL_STD", [58.395, 57.12, 57.375]),
        ("INPUT.FORMAT", "RGB"),
        ("MODEL.ANCHOR_GENERATOR.SIZES", anchors["SIZES"]),
        ("MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES", anchors["OCTAVE_SCALES"]),
        ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", anchors["ASPECT_RATIOS"]),
        ("MODEL.ANCHOR_GENERATOR.OFFSET", anchors["OFFSET"]),
        ("MODEL.RETINANET.NUM_CONVS", 4),
        ("MODEL.RETINANET.NORM", ""),
        ("MODEL.RETINANET.IOU_LABELS", [0, -1, 1]),
        ("MODEL.RETINANET.ALLOW_LOW_QUALITY_MATCHES", False),
        ("MODEL.RETINANET.BOX_CODER_NAME", "LegacyDeltaXYWHBoxCoder"),
        ("MODEL.RETINANET.BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0]),
        ("MODEL.RETINANET.BBOX_REG_SCALE_CLAMP", 10.0),
        ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "smooth_l1"),
        ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", 0.11),
        ("MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM", 0.0),
        ("MODEL.RETINANET.SCORE_THRESH_TEST", 0.05),
        ("MODEL.RETINANET.TOPK_CANDIDATES_TEST", 1000),
        ("MODEL.RETINANET.NMS_THRESH_TEST", 0.5),
        ("TEST.DETECTIONS_PER_IMAGE", 100),
        ("DATASETS.TRAIN", []),
        ("DATASETS.TEST", []),
        ("SOLVER.OPTIMIZER", "SGD"),
        ("SOLVER.MOMENTUM", 0.9),
        ("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR"),
        ("SOLVER.WARMUP_METHOD", "linear"),
        ("SOLVER.WARMUP_FACTOR", 0.1),
    ]


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Flag:
    """One ODTK argument of one subcommand.

    ``to_config(value, args)`` returns the config values the flag sets (``args``: every parsed
    argument, for flags that combine, e.g. ``--iters`` x ``--schedule``); ``None`` when the flag
    is an argument of the run itself (``target`` then names the ``tools/*.py`` argument).
    ``default=None`` for optional flags means "not given" (the model's or config's value stays).
    """

    command: str
    name: str
    target: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    nargs: Any = None
    metavar: Any = None
    store_true: bool = False
    required: bool = False
    to_config: Callable[[Any, argparse.Namespace], Overrides] | None = None
    default_doc: str | None = None  # the default as the docs show it, when not a literal

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")


def _one(key: str, cast: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, argparse.Namespace], Overrides]:
    return lambda v, a: [(key, cast(v))]


def _same(*keys: str) -> Callable[[Any, argparse.Namespace], Overrides]:
    return lambda v, a: [(k, v) for k in keys]


def _photometric(key: str) -> Callable[[Any, argparse.Namespace], Overrides]:
    return lambda v, a: [("INPUT.PHOTOMETRIC.ENABLED", True), (f"INPUT.PHOTOMETRIC.{key}", float(v))]


def _val_images(v: Any, a: argparse.Namespace) -> Overrides:
    if v and not a.val_annotations:
        raise OdtkFlagError("--val-images needs --val-annotations (validation runs on an annotated set); add it or drop --val-images.")
    return [("DATASETS.TEST_IMAGES", v or a.images)] if a.val_annotations else []


def _size(v: Sequence[int], a: argparse.Namespace) -> Overrides:
    if len(v) not in (1, 2):
        raise OdtkFlagError(f"--size takes one value (square) or two (height width), got {len(v)}: {list(v)}.")
    return [("EXPORT.EXAMPLE_SIZE", [int(v[0]), int(v[-1])])]


def _batch_opts(v: Sequence[int], a: argparse.Namespace) -> Overrides:
    lo, opt, hi = (int(x) for x in v)
    if not 1 <= lo <= opt <= hi:
        raise OdtkFlagError(f"--dynamic-batch-opts needs 1 <= min <= opt <= max, got {list(v)}.")
    return [("EXPORT.TENSORRT.BATCH", [lo, opt, hi])]


ODTK_BATCH = "2 x GPUs (2 without GPU)"


def odtk_batch() -> int:
    """ODTK's default batch: 2 images per visible GPU (2 without one)."""
    import torch

    return 2 * max(1, torch.cuda.device_count())


def default_logdir(model: str) -> str:
    """OUTPUT_DIR of ``retinakit train MODEL`` without --logdir: ``MODEL`` minus its extension + ``_logs``."""
    return os.path.splitext(model)[0] + "_logs"


def _single_backbone(names: Sequence[str]) -> str:
    if len(names) != 1:
        raise OdtkFlagError(f"--backbone: retinakit trains one backbone per model, got {len(names)}: {' '.join(names)}.")
    return names[0]
_MODEL_SIZE = "the model's (ODTK .pth: 800)"
_MODEL_MAX = "the model's (ODTK .pth: 1333)"

FLAGS: tuple[Flag, ...] = (
    # ---- train
    Flag("train", "model", "final weights MODEL (copied from OUTPUT_DIR/model_final.pth); resumes from OUTPUT_DIR when MODEL "
         "exists (tools/train_net.py --resume)", "output model path; training resumes when it exists"),
    Flag("train", "--backbone", "MODEL.BACKBONE.NAME, MODEL.RESNETS.* / MODEL.MOBILENETV3.*, MODEL.WEIGHTS (ImageNet)",
         "backbone: " + ", ".join(BACKBONES), default=["ResNet50FPN"], nargs="+", metavar="NAME",
         to_config=lambda v, a: odtk_model(_single_backbone(v))),
    Flag("train", "--classes", "MODEL.RETINANET.NUM_CLASSES", "number of classes", 80, int, metavar="NUM",
         to_config=_one("MODEL.RETINANET.NUM_CLASSES")),
    Flag("train", "--batch", "SOLVER.IMS_PER_BATCH", "batch size (all GPUs together)", None, int, metavar="SIZE",
         to_config=lambda v, a: [("SOLVER.IMS_PER_BATCH", odtk_batch() if v is None else v)], default_doc=ODTK_BATCH),
    Flag("train", "--resize", "INPUT.MIN_SIZE_TEST", "resize (shortest side) for validation", 800, int, metavar="SCALE",
         to_config=_one("INPUT.MIN_SIZE_TEST")),
    Flag("train", "--max-size", "INPUT.MAX_SIZE_TRAIN, INPUT.MAX_SIZE_TEST", "maximum resizing size (longest side)", 1333, int,
         metavar="MAX", to_config=_same("INPUT.MAX_SIZE_TRAIN", "INPUT.MAX_SIZE_TEST")),
    Flag("train", "--jitter", "INPUT.MIN_SIZE_TRAIN, INPUT.MIN_SIZE_TRAIN_SAMPLING=range", "training resize drawn in [min, max]",
         [640, 1024], int, 2, ("MIN", "MAX"),
         to_config=lambda v, a: [("INPUT.MIN_SIZE_TRAIN", [int(v[0]), int(v[1])]), ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range")]),
    Flag("train", "--iters", "SOLVER.MAX_ITER (x --schedule)", "number of iterations", 90000, int, metavar="NUMBER",
         to_config=lambda v, a: [("SOLVER.MAX_ITER", int(v * a.schedule))]),
    Flag("train", "--milestones", "SOLVER.STEPS (x --schedule)", "iterations where the LR decays by --gamma", [60000, 80000], int,
         "*", to_config=lambda v, a: [("SOLVER.STEPS", [int(m * a.schedule) for m in v])]),
    Flag("train", "--schedule", "scales SOLVER.MAX_ITER and SOLVER.STEPS", "scale --iters and --milestones", 1.0, float,
         metavar="SCALE", to_config=lambda v, a: []),
    Flag("train", "--lr", "SOLVER.BASE_LR", "learning rate", 0.01, float, metavar="VALUE", to_config=_one("SOLVER.BASE_LR")),
    Flag("train", "--warmup", "SOLVER.WARMUP_ITERS (from 0.1 x LR)", "warmup iterations", 1000, int, metavar="ITERATIONS",
         to_config=_one("SOLVER.WARMUP_ITERS")),
    Flag("train", "--gamma", "SOLVER.GAMMA", "LR decay factor at each milestone", 0.1, float, metavar="VALUE",
         to_config=_one("SOLVER.GAMMA")),
    Flag("train", "--full-precision", "SOLVER.AMP.ENABLED=False", "train in FP32 (default: mixed precision)", store_true=True,
         default=False, to_config=lambda v, a: [("SOLVER.AMP.ENABLED", not v)]),
    Flag("train", "--override", "start over: tools/train_net.py without --resume", "start over even if MODEL exists",
         store_true=True, default=False),
    Flag("train", "--images", "DATASETS.TRAIN_IMAGES", "training image folder", ".", metavar="PATH",
         to_config=_one("DATASETS.TRAIN_IMAGES")),
    Flag("train", "--annotations", "DATASETS.TRAIN_JSON", "training COCO JSON", None, metavar="PATH", required=True,
         to_config=_one("DATASETS.TRAIN_JSON")),
    Flag("train", "--val-images", "DATASETS.TEST_IMAGES", "validation image folder", None, metavar="PATH",
         to_config=_val_images, default_doc="--images"),
    Flag("train", "--val-annotations", "DATASETS.TEST_JSON", "validation COCO JSON", None, metavar="PATH",
         to_config=lambda v, a: [("DATASETS.TEST_JSON", v)] if v else []),
    Flag("train", "--val-iters", "TEST.EVAL_PERIOD, SOLVER.CHECKPOINT_PERIOD", "iterations between validations/checkpoints", 8000,
         int, metavar="NUMBER", to_config=_same("TEST.EVAL_PERIOD", "SOLVER.CHECKPOINT_PERIOD")),
    Flag("train", "--fine-tune", "MODEL.WEIGHTS (retinakit or ODTK .pth; another class count re-initialises the classifier)",
         "start from these weights", None, metavar="PATH", to_config=lambda v, a: [("MODEL.WEIGHTS", v)] if v else []),
    Flag("train", "--logdir", "OUTPUT_DIR (metrics.json, TensorBoard events, checkpoints)",
         "log folder", None, metavar="LOGDIR", to_config=lambda v, a: [("OUTPUT_DIR", v or default_logdir(a.model))],
         default_doc="MODEL without .pth + '_logs'"),
    Flag("train", "--with-dali", "DATALOADER.BACKEND=dali", "load data with NVIDIA DALI (pip install retinakit[dali])",
         store_true=True, default=False, to_config=lambda v, a: [("DATALOADER.BACKEND", "dali")] if v else []),
    Flag("train", "--augment-brightness", "INPUT.PHOTOMETRIC.BRIGHTNESS (ENABLED=True)", "brightness jitter", 0.002, float,
         metavar="VALUE", to_config=_photometric("BRIGHTNESS")),
    Flag("train", "--augment-contrast", "INPUT.PHOTOMETRIC.CONTRAST (ENABLED=True)", "contrast jitter", 0.002, float,
         metavar="VALUE", to_config=_photometric("CONTRAST")),
    Flag("train", "--augment-hue", "INPUT.PHOTOMETRIC.HUE (ENABLED=True)", "hue jitter", 0.0002, float, metavar="VALUE",
         to_config=_photometric("HUE")),
    Flag("train", "--augment-saturation", "INPUT.PHOTOMETRIC.SATURATION (ENABLED=True)", "saturation jitter", 0.002, float,
         metavar="VALUE", to_config=_photometric("SATURATION")),
    Flag("train", "--regularization-l2", "SOLVER.WEIGHT_DECAY, SOLVER.WEIGHT_DECAY_BIAS", "L2 weight decay", 0.0001, float,
         metavar="VALUE", to_config=_same("SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BIAS")),
    Flag("train", "--anchor-ious", "MODEL.RETINANET.IOU_THRESHOLDS", "background / foreground IoU thresholds", [0.4, 0.5], float, 2,
         ("BG", "FG"), to_config=lambda v, a: [("MODEL.RETINANET.IOU_THRESHOLDS", [float(v[0]), float(v[1])])]),
    # ---- infer
    Flag("infer", "model", "tools/infer.py --model (an ODTK .pth is converted in memory)",
         "model: retinakit .pth (config MODEL.yaml beside it, or --config-file), ODTK .pth, .onnx or .plan"),
    Flag("infer", "--images", "tools/infer.py --images", "image folder", ".", metavar="PATH"),
    Flag("infer", "--annotations", "tools/infer.py --annotations (image/category ids, COCO AP table)",
         "COCO JSON: ids of the detections and COCO evaluation", None, metavar="PATH"),
    Flag("infer", "--output", "tools/infer.py --output", "detections JSON (COCO results)", "detections.json", metavar="FILE"),
    Flag("infer", "--batch", "tools/infer.py --batch-size", "images per batch", None, int, metavar="SIZE", default_doc=ODTK_BATCH),
    Flag("infer", "--resize", "INPUT.MIN_SIZE_TEST", "resize (shortest side)", None, int, metavar="SCALE",
         to_config=lambda v, a: [("INPUT.MIN_SIZE_TEST", v)] if v is not None else [], default_doc=_MODEL_SIZE),
    Flag("infer", "--max-size", "INPUT.MAX_SIZE_TEST", "maximum resizing size (longest side)", None, int, metavar="MAX",
         to_config=lambda v, a: [("INPUT.MAX_SIZE_TEST", v)] if v is not None else [], default_doc=_MODEL_MAX),
    Flag("infer", "--full-precision", "(always: a .pth runs in FP32; .onnx/.plan keep their export precision)",
         "FP32 inference", store_true=True, default=False),
    Flag("infer", "--with-dali", "(no effect: the predictor decodes images itself; a notice is printed)",
         "DALI data loading (ODTK)", store_true=True, default=False),
    # ---- export
    Flag("export", "model", "tools/deploy.py --weights (an ODTK .pth is converted in memory)",
         "model: retinakit .pth (config MODEL.yaml beside it, or --config-file) or ODTK .pth"),
    Flag("export", "export", "tools/deploy.py --output (.onnx: ONNX only; .plan/.engine: ONNX + TensorRT engine, --tensorrt)",
         "exported file: .onnx or .plan"),
    Flag("export", "--size", "EXPORT.EXAMPLE_SIZE (the graph keeps height/width dynamic)", "input size (square) or height width",
         [1280], int, "+", ("HEIGHT", "WIDTH"), to_config=_size),
    Flag("export", "--full-precision", "tools/deploy.py without --fp16 (FP32 graph)", "export in FP32 (default: FP16)",
         store_true=True, default=False),
    Flag("export", "--int8", "tools/deploy.py --int8 (Q/DQ INT8 ONNX)", "calibrate and export in INT8", store_true=True,
         default=False),
    Flag("export", "--calibration-images", "tools/deploy.py --calibration-images", "calibration image folder (INT8)", "",
         metavar="PATH"),
    Flag("export", "--calibration-batches", "EXPORT.INT8.NUM_IMAGES (= batches x opt batch of --dynamic-batch-opts)",
         "calibration batches (INT8)", 2, int, metavar="SIZE",
         to_config=lambda v, a: [("EXPORT.INT8.NUM_IMAGES", int(v) * int(a.dynamic_batch_opts[1]))]),
    Flag("export", "--calibration-table", "tools/deploy.py --calibration-cache", "calibration table to reuse or write (INT8)", "",
         metavar="PATH"),
    Flag("export", "--dynamic-batch-opts", "EXPORT.TENSORRT.BATCH", "TensorRT profile batch sizes", [1, 8, 16], int, 3,
         ("MIN", "OPT", "MAX"), to_config=_batch_opts),
    Flag("export", "--opset", "EXPORT.OPSET", "ONNX opset (default: retinakit's)", None, int, metavar="VERSION",
         to_config=lambda v, a: [("EXPORT.OPSET", v)] if v is not None else []),
    Flag("export", "--verbose", "(log level DEBUG)", "verbose logging", store_true=True, default=False),
)

# ODTK flags retinakit refuses before doing any work: flag -> what to do instead.
UNSUPPORTED: dict[str, str] = {
    "--rotated-bbox": "retinakit detects axis-aligned boxes only (rotated-box ODTK models are not supported); drop the flag",
    "--absolute-angle": "it is an option of rotated-box training, which retinakit does not support; drop the flag",
    "--augment-free-rotate": "arbitrary-angle rotation is not an augmentation of retinakit; use INPUT.RANDOM_FLIP and "
                             "--augment-brightness/contrast/hue/saturation (INPUT.PHOTOMETRIC.*)",
    "--augment-rotate": "four-fold rotation is not an augmentation of retinakit; INPUT.RANDOM_FLIP (horizontal/vertical) flips "
                        "instead",
    "--post-metrics": "retinakit does not post metrics to a URL; they are in OUTPUT_DIR/metrics.json and TensorBoard events",
    "--with-apex": "native AMP (torch.autocast, SOLVER.AMP.ENABLED) is already the default; drop the flag "
                   "(--full-precision turns mixed precision off)",
}


def check_unsupported(argv: Sequence[str]) -> None:
    """:class:`OdtkFlagError` naming the first unsupported ODTK flag of ``argv`` and what to do."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in UNSUPPORTED:
            raise OdtkFlagError(f"{flag} is not supported: {UNSUPPORTED[flag]}.")


def flags_of(command: str) -> list[Flag]:
    return [f for f in FLAGS if f.command == command]


def _help(f: Flag) -> str:
    shown = f.default_doc or (None if f.default in (None, False, "") else f.default)
    default = f" (default: {' '.join(map(str, shown)) if isinstance(shown, list) else shown})" if shown is not None else ""
    return f"{f.help}{default} -> {f.target}".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the rows of ``command`` to ``parser``; help shows ODTK's meaning and the key it sets."""
    for f in flags_of(command):
        if f.positional:
            parser.add_argument(f.name, help=_help(f))
        elif f.store_true:
            parser.add_argument(f.name, action="store_true", help=_help(f))
        else:
            parser.add_argument(f.name, type=f.type or str, nargs=f.nargs, default=f.default, metavar=f.metavar,
                                required=f.required, help=_help(f))


def flag_overrides(command: str, args: argparse.Namespace) -> Overrides:
    """The config values that ``args`` (parsed by a parser from :func:`add_flags`) set, in table order."""
    out: Overrides = []
    for f in flags_of(command):
        if f.to_config is not None:
            out += f.to_config(getattr(args, f.dest), args)
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table() -> str:
    """The flag table of docs/odtk_migration.md (one section per subcommand), from :data:`FLAGS`."""
    lines: list[str] = []
    for command in ("train", "infer", "export"):
        lines += [f"### `retinakit {command}`", "", "| ODTK argument | ODTK default | retinakit (config key or tool argument) |",
                  "|---|---|---|"]
        for f in flags_of(command):
            shown = f.default_doc or ("required" if f.required else "off" if f.store_true else "" if f.default is None else f.default)
            default = " ".join(map(str, shown)) if isinstance(shown, list) else str(shown)
            lines.append(f"| `{f.name}` | {_cell(default)} | {_cell(f.target)} |")
        lines.append("")
    lines += ["### Refused (one line, exit code 2, before any work)", "", "| ODTK flag | instead |", "|---|---|"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in UNSUPPORTED.items()]
    return "\n".join(lines) + "\n"
