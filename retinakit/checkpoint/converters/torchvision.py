"""torchvision -> retinakit: RetinaNet (v1 and v2) detection weights and ImageNet ResNets.

Key mapping (torchvision -> retinakit):

* ``backbone.body.*``                      -> ``backbone.bottom_up.*``
* ``backbone.fpn.inner_blocks.{i}[.0].*``  -> ``backbone.lateral_convs.{i}.conv.*``
* ``backbone.fpn.layer_blocks.{i}[.0].*``  -> ``backbone.output_convs.{i}.conv.*``
* ``backbone.fpn.extra_blocks.p6/p7.*``    -> ``backbone.top_block.p6/p7.*``
* ``head.classification_head.conv.{j}.0.*`` -> ``head.cls_subnet.{j}.conv.*`` (``.1.*`` GN -> ``.norm.*``)
* ``head.classification_head.cls_logits.*`` -> ``head.cls_score.*``
* ``head.regression_head.conv.*`` / ``bbox_reg.*`` -> ``head.bbox_subnet.*`` / ``head.bbox_pred.*``
* an ImageNet ResNet (``conv1.weight``, ``layer1.*``, ``fc.*``) -> ``backbone.bottom_up.*`` without ``fc``.

Old torchvision head checkpoints (``conv.{2j}.weight``: conv/ReLU alternating) are accepted too.
"""
from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

__all__ = ["convert", "detect_version", "is_imagenet_resnet", "matches"]

_FPN_RULES = [
    (re.compile(r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)$"), r"backbone.lateral_convs.\1.conv.\2"),
    (re.compile(r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)$"), r"backbone.output_convs.\1.conv.\2"),
    (re.compile(r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$"), r"backbone.top_block.\1.\2"),
]
_HEAD_NAMES = {
    "classification_head": ("cls_subnet", "cls_score", "cls_logits"),
    "regression_head": ("bbox_subnet", "bbox_pred", "bbox_reg"),
}
_HEAD_CONV = re.compile(r"^head\.(classification_head|regression_head)\.conv\.(\d+)\.(?:(\d+)\.)?(weight|bias)$")
_HEAD_OUT = re.compile(r"^head\.(classification_head|regression_head)\.(cls_logits|bbox_reg)\.(weight|bias)$")


def is_imagenet_resnet(sd: StateDict) -> bool:
    """A torchvision ImageNet ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``)."""
    return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd


def matches(sd: StateDict) -> bool:
    """True for torchvision RetinaNet detection weights or ImageNet ResNets."""
    return is_imagenet_resnet(sd) or any(k.startswith("head.classification_head.") for k in sd)


def detect_version(sd: StateDict) -> str:
    """"v2" when the head has GroupNorm and P6 comes from C5, else "v1"."""
    gn = any(re.match(r"^head\.classification_head\.conv\.\d+\.1\.weight$", k) for k in sd)
    p6 = sd.get("backbone.fpn.extra_blocks.p6.weight")
    from_c5 = p6 is not None and p6.shape[1] != p6.shape[0]
    return "v2" if gn or from_c5 else "v1"


def _head_key(key: str) -> str:
    m = _HEAD_OUT.match(key)
    if m:
        return f"head.{_HEAD_NAMES[m.group(1)][1]}.{m.group(3)}"
    m = _HEAD_CONV.match(key)
    if not m:
        raise KeyError(key)
    tower, idx, sub, param = m.groups()
    prefix = f"head.{_HEAD_NAMES[tower][0]}"
    if sub is None:  # old layout: Sequential(conv, relu, conv, relu, ...)
        return f"{prefix}.{int(idx) // 2}.conv.{param}"
    part = {"0": "conv", "1": "norm"}[sub]
    return f"{prefix}.{idx}.{part}.{param}"


def _convert_key(key: str) -> str:
    if key.startswith("backbone.body."):
        return "backbone.bottom_up." + key[len("backbone.body."):]
    for pattern, repl in _FPN_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    if key.startswith("head."):
        return _head_key(key)
    raise KeyError(key)


def convert(sd: StateDict) -> tuple[StateDict, dict]:
    """torchvision state dict -> (retinakit state dict, info with ``source``/``version``/``num_classes``)."""
    if is_imagenet_resnet(sd):
        body = {f"backbone.bottom_up.{k}": v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
        return body, {"source": "torchvision", "kind": "imagenet_resnet"}
    out: StateDict = {}
    unknown = []
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        try:
            out[_convert_key(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys of the torchvision checkpoint have no retinakit equivalent, e.g. {unknown[:5]}. "
            "Is it a torchvision RetinaNet (retinanet_resnet50_fpn / _v2) checkpoint?"
        )
    version = detect_version(sd)
    cls = out.get("head.cls_score.weight")
    num_anchors = out["head.bbox_pred.weight"].shape[0] // 4 if "head.bbox_pred.weight" in out else 9
    info: dict = {"source": "torchvision", "kind": "retinanet", "version": version}
    if cls is not None:
        info["num_classes"] = cls.shape[0] // num_anchors
    info["config"] = f"configs/COCO-Detection/retinanet_R_50_FPN{'_v2' if version == 'v2' else ''}_torchvision.yaml"
    return out, info
