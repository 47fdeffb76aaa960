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
* an ImageNet MobileNetV3 (``features.*``, ``classifier.*``) -> ``backbone.bottom_up.*`` of
  ``modeling/backbone/mobilenet.py`` without ``classifier``: ``features.0.{0,1}`` -> ``stem.{conv,norm}``;
  ``features.i.block.j`` -> ``blocks.{i-1}.{expand,depthwise,se,project}`` (the convs of a block in
  order: expand (absent when the block does not expand), depthwise, project; ``fc1``/``fc2`` -> ``se``);
  the last ``features.n.{0,1}`` (a plain 1x1 conv) -> ``last.{conv,norm}``.

Old torchvision head checkpoints (``conv.{2j}.weight``: conv/ReLU alternating) are accepted too.
"""
from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

__all__ = ["convert", "convert_imagenet_mobilenet_v3", "detect_version", "is_imagenet_mobilenet_v3", "is_imagenet_resnet", "matches"]

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


def is_imagenet_mobilenet_v3(sd: StateDict) -> bool:
    """A torchvision ImageNet MobileNetV3 state dict (``features.0.0.weight``, ``features.1.block.*``)."""
    return "features.0.0.weight" in sd and any(k.startswith("features.1.block.") for k in sd)


_MNV3_KEY = re.compile(r"^features\.(\d+)\.(?:block\.(\d+)\.)?(.+)$")
_MNV3_CONV_ROLES = {3: ("expand", "depthwise", "project"), 2: ("depthwise", "project")}


def _mnv3_block_roles(sd: StateDict) -> dict[tuple[int, int], str]:
    """``(feature index, sub-module index) -> role`` for every inverted residual block."""
    subs: dict[int, set[int]] = {}
    se: set[tuple[int, int]] = set()
    for key in sd:
        m = _MNV3_KEY.match(key)
        if m and m.group(2) is not None:
            subs.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            if m.group(3).startswith("fc1."):
                se.add((int(m.group(1)), int(m.group(2))))
    roles = {}
    for feat, indices in subs.items():
        convs = sorted(j for j in indices if (feat, j) not in se)
        names = _MNV3_CONV_ROLES.get(len(convs), tuple(f"conv{n}" for n in range(len(convs))))
        roles.update({(feat, j): name for j, name in zip(convs, names)})
        roles.update({(feat, j): "se" for j in indices if (feat, j) in se})
    return roles


def _conv_or_norm(rest: str) -> str:
    """``0.weight`` -> ``conv.weight``, ``1.running_mean`` -> ``norm.running_mean`` (torchvision's Conv2dNormActivation)."""
    head, _, tail = rest.partition(".")
    return f"{ {'0': 'conv', '1': 'norm'}.get(head, head)}.{tail}"


def convert_imagenet_mobilenet_v3(sd: StateDict, prefix: str = "backbone.bottom_up.") -> StateDict:
    """torchvision ``mobilenet_v3_large/small`` ImageNet state dict -> retinakit MobileNetV3 keys under ``prefix``.

    Keys that follow no MobileNetV3 pattern are kept unchanged (under ``prefix``) so that loading
    reports them as unexpected.
    """
    roles = _mnv3_block_roles(sd)
    plain = sorted({int(m.group(1)) for k in sd if (m := _MNV3_KEY.match(k)) and m.group(2) is None})
    last = plain[-1] if len(plain) > 1 else None
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked") or key.startswith("classifier."):
            continue
        m = _MNV3_KEY.match(key)
        new = key
        if m and m.group(2) is not None:
            feat, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            role = roles[(feat, sub)]
            new = f"blocks.{feat - 1}.{role}.{rest if role == 'se' else _conv_or_norm(rest)}"
        elif m and int(m.group(1)) in (0, last):
            new = f"{'stem' if int(m.group(1)) == 0 else 'last'}.{_conv_or_norm(m.group(3))}"
        out[prefix + new] = value
    return out


def matches(sd: StateDict) -> bool:
    """True for torchvision RetinaNet detection weights, ImageNet ResNets or ImageNet MobileNetV3s."""
    return is_imagenet_resnet(sd) or is_imagenet_mobilenet_v3(sd) or any(k.startswith("head.classification_head.") for k in sd)


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
    if is_imagenet_mobilenet_v3(sd):
        return convert_imagenet_mobilenet_v3(sd), {"source": "torchvision", "kind": "imagenet_mobilenet_v3"}
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
