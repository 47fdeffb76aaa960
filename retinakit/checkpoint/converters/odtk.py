"""ODTK (NVIDIA retinanet-examples) -> retinakit: ResNet-18/34/50/101/152 and ResNeXt FPN RetinaNets.

An ODTK checkpoint is ``{"backbone": ["ResNet50FPN"], "classes": K, "state_dict": ...,
"ratios": [...], "scales": [...]}``. Key mapping (ODTK -> retinakit), ``B`` the backbone name:

* ``backbones.B.features.*`` (a torchvision ResNet) -> ``backbone.bottom_up.*`` (``fc.*`` dropped)
* ``backbones.B.lateral{3,4,5}.*``  -> ``backbone.lateral_convs.{0,1,2}.conv.*``
* ``backbones.B.smooth{3,4,5}.*``   -> ``backbone.output_convs.{0,1,2}.conv.*``
* ``backbones.B.pyramid6/7.*``      -> ``backbone.top_block.p6/p7.*`` (P6 from C5)
* ``cls_head.{2j}.*`` / ``box_head.{2j}.*`` (j < 4) -> ``head.cls_subnet.{j}.conv.*`` / ``head.bbox_subnet.{j}.conv.*``
* ``cls_head.8.*`` / ``box_head.8.*``  -> ``head.cls_score.*`` / ``head.bbox_pred.*``, output channels permuted

Anchors. ODTK's anchors at a level of stride ``t`` have sizes ``t * scale`` (scales
``4 * 2^(i/3)``) and height/width ratios ``[1, 2, 0.5]``, are ordered scale-major
(``for scale: for ratio``) and centred at ``(i + 0.5) * t``. retinakit orders them
ratio-major, so the output channels are permuted (as for detectron2) and the matching config
sets ``SIZES`` per level (``t * scale``), the ratios in ODTK's order and ``OFFSET: 0.5``.

Box coding. ODTK measures anchors in inclusive pixels (width ``x2 - x1 + 1``) and returns
inclusive boxes; the config selects :class:`~retinakit.modeling.box_coder.LegacyDeltaXYWHBoxCoder`,
which decodes the same boxes in retinakit's continuous coordinates (what ODTK writes to its
COCO results). ODTK has no clamp on ``dw``/``dh``; the config uses a clamp of 10 (boxes
wider than ``e^10`` anchors are clipped to the image either way).

Not expressible in a config (so small differences remain): ODTK pads images to a multiple
of 128, retinakit to the backbone's size divisibility (32); for images whose size is a
multiple of 128 the detections are the same. Rotated-box ODTK models and MobileNetV2-FPN are
not supported.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .detectron2 import anchor_permutation, permute_anchor_outputs

StateDict = dict[str, torch.Tensor]

__all__ = ["BACKBONES", "DEFAULT_RATIOS", "DEFAULT_SCALES", "anchor_config", "convert", "matches"]

# ODTK backbone name -> (depth, groups, width_per_group)
BACKBONES = {
    "ResNet18FPN": (18, 1, 64),
    "ResNet34FPN": (34, 1, 64),
    "ResNet50FPN": (50, 1, 64),
    "ResNet101FPN": (101, 1, 64),
    "ResNet152FPN": (152, 1, 64),
    "ResNeXt50_32x4dFPN": (50, 32, 4),
    "ResNeXt101_32x8dFPN": (101, 32, 8),
}
DEFAULT_RATIOS = [1.0, 2.0, 0.5]
DEFAULT_SCALES = [4 * 2 ** (i / 3) for i in range(3)]
STRIDES = (8, 16, 32, 64, 128)
CONFIG = "configs/converted/odtk_retinanet_R_{depth}_FPN.yaml"

_BACKBONE_KEY = re.compile(r"^backbones\.(\w+?)\.(features|lateral\d|smooth\d|pyramid\d)\.(.+)$")
_HEAD = re.compile(r"^(cls_head|box_head)\.(\d+)\.(weight|bias)$")
_FPN_NAMES = {
    "lateral3": "lateral_convs.0.conv", "lateral4": "lateral_convs.1.conv", "lateral5": "lateral_convs.2.conv",
    "smooth3": "output_convs.0.conv", "smooth4": "output_convs.1.conv", "smooth5": "output_convs.2.conv",
    "pyramid6": "top_block.p6", "pyramid7": "top_block.p7",
}


def matches(sd: Mapping[str, Any]) -> bool:
    """True for an ODTK state dict (``backbones.<Name>.features.*`` and ``cls_head.*``)."""
    return any(k.startswith("backbones.") for k in sd) and any(k.startswith("cls_head.") for k in sd)


def anchor_config(ratios: Sequence[float], scales: Sequence[float]) -> dict[str, Any]:
    """``MODEL.ANCHOR_GENERATOR`` values that reproduce ODTK's anchors for ``ratios``/``scales``."""
    return {
        "SIZES": [[float(t * s) for s in scales] for t in STRIDES],
        "OCTAVE_SCALES": [1.0],
        "ASPECT_RATIOS": [[float(r) for r in ratios]],
        "OFFSET": 0.5,
    }


def _backbone_name(sd: Mapping[str, Any]) -> str:
    names = sorted({m.group(1) for k in sd for m in [_BACKBONE_KEY.match(k)] if m})
    if len(names) != 1:
        raise ValueError(f"expected one ODTK backbone under backbones.*, found {names or 'none'}")
    return names[0]


def convert(sd: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None) -> tuple[StateDict, dict]:
    """ODTK state dict (and the checkpoint's ``ratios``/``scales``/``classes``, when given)
    -> (retinakit state dict, info with ``config`` and ``config_overrides``)."""
    checkpoint = checkpoint or {}
    if checkpoint.get("angles") is not None or checkpoint.get("rotated_bbox"):
        raise ValueError("rotated-box ODTK models are not supported (retinakit detects axis-aligned boxes)")
    name = _backbone_name(sd)
    if name not in BACKBONES:
        raise ValueError(f"ODTK backbone {name} is not supported; supported: {', '.join(BACKBONES)}")
    depth, groups, width = BACKBONES[name]
    ratios = [float(r) for r in checkpoint.get("ratios", DEFAULT_RATIOS)]
    scales = [float(s) for s in checkpoint.get("scales", DEFAULT_SCALES)]
    num_anchors = len(ratios) * len(scales)
    box_out = sd.get("box_head.8.weight")
    if box_out is None:
        raise ValueError("box_head.8 (the box regression output) is missing: is it an ODTK RetinaNet checkpoint?")
    if int(box_out.shape[0]) != 4 * num_anchors:
        raise ValueError(
            f"box_head.8 predicts {int(box_out.shape[0]) // 4} anchors per location but ratios {ratios} x scales "
            f"{scales} give {num_anchors}; pass the checkpoint's ratios/scales"
        )
    perm = anchor_permutation(len(scales), len(ratios))  # ODTK: scale-major, retinakit: ratio-major
    num_classes = int(sd["cls_head.8.weight"].shape[0]) // num_anchors
    if "classes" in checkpoint and int(checkpoint["classes"]) != num_classes:
        raise ValueError(f"the checkpoint says {checkpoint['classes']} classes but cls_head.8 holds {num_classes}")

    out: StateDict = {}
    unknown: list[str] = []
    last_head = max(int(m.group(2)) for k in sd for m in [_HEAD.match(k)] if m)
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = _BACKBONE_KEY.match(key)
        if m and m.group(1) == name:
            part, rest = m.group(2), m.group(3)
            if part == "features":
                if not rest.startswith("fc."):
                    out[f"backbone.bottom_up.{rest}"] = value
            elif part in _FPN_NAMES:
                out[f"backbone.{_FPN_NAMES[part]}.{rest}"] = value
            else:
                unknown.append(key)
            continue
        m = _HEAD.match(key)
        if m:
            tower, idx, param = m.group(1), int(m.group(2)), m.group(3)
            if idx == last_head:
                new = "head.cls_score" if tower == "cls_head" else "head.bbox_pred"
                out[f"{new}.{param}"] = permute_anchor_outputs(value, perm)
            elif idx % 2 == 0:
                sub = "cls_subnet" if tower == "cls_head" else "bbox_subnet"
                out[f"head.{sub}.{idx // 2}.conv.{param}"] = value
            else:
                unknown.append(key)
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} keys of the ODTK checkpoint have no retinakit equivalent, e.g. {unknown[:5]}")

    overrides: list[Any] = ["MODEL.RETINANET.NUM_CLASSES", num_classes]
    if groups != 1:
        overrides += ["MODEL.RESNETS.NUM_GROUPS", groups, "MODEL.RESNETS.WIDTH_PER_GROUP", width]
    if last_head != 8:
        overrides += ["MODEL.RETINANET.NUM_CONVS", last_head // 2]
    if ratios != DEFAULT_RATIOS or scales != DEFAULT_SCALES:
        anchors = anchor_config(ratios, scales)
        overrides += ["MODEL.ANCHOR_GENERATOR.SIZES", anchors["SIZES"], "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", anchors["ASPECT_RATIOS"]]
    info: dict[str, Any] = {
        "source": "odtk",
        "kind": "retinanet",
        "backbone": name,
        "depth": depth,
        "num_classes": num_classes,
        "num_anchors": num_anchors,
        "config": CONFIG.format(depth=depth),
        "config_overrides": overrides,
        # config values these weights are wrong without (checked by converters.check_config)
        "requires": {
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "INPUT.FORMAT": "RGB",
            "MODEL.ANCHOR_GENERATOR.OFFSET": 0.5,
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [ratios],
            "MODEL.RETINANET.BOX_CODER_NAME": "LegacyDeltaXYWHBoxCoder",
        },
    }
    return out, info
