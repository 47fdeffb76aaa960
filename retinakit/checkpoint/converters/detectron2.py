"""detectron2 -> retinakit: RetinaNet checkpoints (model-zoo ``.pkl`` and trained ``.pth``).

Key mapping (detectron2 -> retinakit):

* ``backbone.bottom_up.stem.conv1.weight`` / ``.norm.*``    -> ``backbone.bottom_up.conv1.weight`` / ``bn1.*``
* ``backbone.bottom_up.res{s}.{b}.conv{i}.weight`` / ``.norm.*`` -> ``backbone.bottom_up.layer{s-1}.{b}.conv{i}.weight`` / ``bn{i}.*``
* ``backbone.bottom_up.res{s}.{b}.shortcut.weight`` / ``.norm.*`` -> ``...layer{s-1}.{b}.downsample.0.weight`` / ``downsample.1.*``
* ``backbone.fpn_lateral{n}.*`` / ``backbone.fpn_output{n}.*`` -> ``backbone.lateral_convs.{i}.conv.*`` / ``output_convs.{i}.conv.*``
  (``.norm.*`` -> ``.norm.*``; ``i`` counts from the finest FPN input)
* ``backbone.top_block.p6/p7.*``                              -> unchanged
* ``head.cls_subnet.{2j}.*`` / ``head.bbox_subnet.{2j}.*``    -> ``head.cls_subnet.{j}.conv.*`` / ``head.bbox_subnet.{j}.conv.*``
* ``head.cls_score.*`` / ``head.bbox_pred.*``                 -> same names, output channels permuted (below)

Anchor order. detectron2's cell anchors are size-major (``for size: for ratio``) while
retinakit's are ratio-major (``for ratio: for size``), so the per-anchor output channel
blocks of ``cls_score`` (``K`` channels per anchor) and ``bbox_pred`` (4 per anchor) are
reordered. With ``S`` sizes and ``R`` ratios, retinakit anchor ``r * S + s`` takes
detectron2's anchor ``s * R + r``.

Architecture facts that are not visible in the weights are put in the matching config
(``configs/converted/detectron2_*.yaml``): detectron2's ResNets put the stride of a
bottleneck on its first 1x1 conv (``STRIDE_IN_1X1: True``, MSRA/caffe weights) and take BGR
images normalised with caffe means and unit std. A model trained with ``STRIDE_IN_1X1: False``
or other pixel statistics needs those keys overridden.
"""
from __future__ import annotations

import importlib.util
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

# The only globals a detectron2 model-zoo pickle needs: numpy arrays, scalars, dtypes,
# OrderedDict and the bytes helper of protocol-2 pickles. Anything else is refused.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a detectron2 weights pickle holds only numpy arrays"
            )
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
            module = "numpy._core." + module[len("numpy.core."):]  # numpy >= 2 renamed numpy.core
        return super().find_class(module, name)


def _to_tensors(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if type(obj).__module__ == "numpy" and hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return torch.as_tensor(obj)
    return obj


def load_pkl(path: str) -> dict[str, Any]:
    """Read a detectron2 ``.pkl`` (model zoo: ``{"model": {name: ndarray}, ...}``) safely.

    A restricted unpickler accepts only numpy arrays and plain containers (a pickle that
    would run code raises ``pickle.UnpicklingError``); arrays become tensors.
    """
    with open(path, "rb") as f:
        data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(data, Mapping):
        raise TypeError(f"{path} holds a {type(data).__name__}, not a checkpoint dictionary")
    return dict(_to_tensors(data))

__all__ = ["CONFIGS", "anchor_permutation", "convert", "load_pkl", "matches", "permute_anchor_outputs"]

# Depth -> static config (the model-zoo architectures); other depths use R_50 + overrides.
CONFIGS = {
    50: "configs/converted/detectron2_retinanet_R_50_FPN.yaml",
    101: "configs/converted/detectron2_retinanet_R_101_FPN.yaml",
}
# (blocks in res2..res5, bottleneck?) -> depth
_DEPTHS: dict[tuple[tuple[int, ...], bool], int] = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}
# Tensors of the detectron2 model that are not weights of the network.
_IGNORED = re.compile(r"^(pixel_mean|pixel_std|anchor_generator\..*|.*num_batches_tracked)$")
_STEM = re.compile(r"^backbone\.bottom_up\.stem\.conv1\.(?:(weight|bias)|norm\.(\w+))$")
_BLOCK = re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.(?:(weight|bias)|norm\.(\w+))$")
_FPN = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(?:(weight|bias)|norm\.(\w+))$")
_TOP = re.compile(r"^backbone\.top_block\.(p6|p7)\.(weight|bias)$")
_SUBNET = re.compile(r"^head\.(cls_subnet|bbox_subnet)\.(\d+)\.(weight|bias)$")
_HEAD_OUT = re.compile(r"^head\.(cls_score|bbox_pred)\.(weight|bias)$")


def matches(sd: Mapping[str, Any]) -> bool:
    """True for a detectron2 RetinaNet state dict (ResNet stem under ``backbone.bottom_up.stem``
    or detectron2's FPN names)."""
    return any(k.startswith(("backbone.bottom_up.stem.", "backbone.fpn_lateral")) for k in sd)


def anchor_permutation(num_sizes: int, num_ratios: int) -> list[int]:
    """``perm[k]`` = index of the size-major anchor (``s * R + r``) that becomes the
    ratio-major anchor ``k = r * S + s``."""
    return [s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)]


def permute_anchor_outputs(t: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """Reorder the per-anchor blocks of an output conv's weight ``[A*C, ...]`` or bias ``[A*C]``."""
    a = len(perm)
    if t.shape[0] % a:
        raise ValueError(f"an output layer with {t.shape[0]} channels cannot hold {a} anchors")
    blocks = t.reshape(a, t.shape[0] // a, *t.shape[1:])
    return blocks[torch.as_tensor(list(perm))].reshape(t.shape).contiguous()


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    # detectron2 model-zoo pickles hold numpy arrays
    return torch.as_tensor(value)


def _norm_name(block_part: str, stat: str) -> str:
    if block_part == "shortcut":
        return f"downsample.1.{stat}"
    return f"bn{block_part[-1]}.{stat}"


def _backbone_key(key: str, fpn_base: int) -> str | None:
    m = _STEM.match(key)
    if m:
        return f"backbone.bottom_up.conv1.{m.group(1)}" if m.group(1) else f"backbone.bottom_up.bn1.{m.group(2)}"
    m = _BLOCK.match(key)
    if m:
        stage, block, part, param, stat = m.groups()
        prefix = f"backbone.bottom_up.layer{int(stage) - 1}.{block}."
        if stat is not None:
            return prefix + _norm_name(part, stat)
        return prefix + ("downsample.0." if part == "shortcut" else f"{part}.") + param
    m = _FPN.match(key)
    if m:
        kind, level, param, stat = m.groups()
        name = "lateral_convs" if kind == "lateral" else "output_convs"
        tail = f"conv.{param}" if param else f"norm.{stat}"
        return f"backbone.{name}.{int(level) - fpn_base}.{tail}"
    if _TOP.match(key):
        return key
    return None


def _resnet_layout(sd: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """(depth, num_groups, width_per_group) from the ``res*`` block keys."""
    blocks: dict[int, set] = {}
    bottleneck = False
    for key in sd:
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck = bottleneck or m.group(3) == "conv3"
    counts = tuple(len(blocks.get(s, ())) for s in (2, 3, 4, 5))
    depth = _DEPTHS.get((counts, bottleneck))
    if depth is None:
        raise ValueError(
            f"the ResNet has {counts} blocks in res2..res5 ({'bottleneck' if bottleneck else 'basic'} blocks), "
            "which is not a ResNet-18/34/50/101/152"
        )
    groups, width = 1, 64
    conv2 = sd.get("backbone.bottom_up.res2.0.conv2.weight")
    if bottleneck and conv2 is not None:
        width_total, per_group = int(conv2.shape[0]), int(conv2.shape[1])
        groups = width_total // per_group
        width = per_group
        if groups == 1:
            width = 64 if width_total == 64 else width_total
    return depth, groups, width


def _subnet_layout(sd: Mapping[str, torch.Tensor], tower: str) -> list[int]:
    """Sequential indices of the convs in a head tower; checks the (conv, ReLU) layout."""
    indices = sorted({int(m.group(2)) for k in sd for m in [_SUBNET.match(k)] if m and m.group(1) == tower})
    convs = [i for i in indices if sd[f"head.{tower}.{i}.weight"].dim() == 4]
    if convs != indices or convs != list(range(0, 2 * len(convs), 2)):
        raise ValueError(
            f"head.{tower} has layers at indices {indices}: a head with normalisation layers "
            "(MODEL.RETINANET.NORM != '') keeps a conv bias before the norm that retinakit's head does not have; "
            "only detectron2 heads without norm (the default) can be converted"
        )
    return convs


def convert(sd: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None, num_aspect_ratios: int = 3) -> tuple[StateDict, dict]:
    """detectron2 state dict -> (retinakit state dict, info).

    ``info`` has ``source``, ``kind``, ``num_classes``, ``depth``, ``config`` (a static config
    under ``configs/converted/``) and ``config_overrides`` (``KEY, VALUE, ...`` for
    ``cfg.merge_from_list``) that complete it for this checkpoint. ``num_aspect_ratios`` is the
    number of ratios of the anchor generator the model was trained with (detectron2: 3); the
    number of sizes is the anchor count divided by it.
    """
    sd = {k: _as_tensor(v) for k, v in sd.items()}
    lateral_levels = sorted({int(m.group(2)) for k in sd for m in [_FPN.match(k)] if m and m.group(1) == "lateral"})
    if not lateral_levels:
        raise ValueError("no detectron2 FPN layers (backbone.fpn_lateral*) found: is it a RetinaNet checkpoint?")
    fpn_base = lateral_levels[0]
    for tower in ("cls_subnet", "bbox_subnet"):
        _subnet_layout(sd, tower)
    if "head.bbox_pred.weight" not in sd or "head.cls_score.weight" not in sd:
        raise ValueError("head.cls_score / head.bbox_pred are missing: is it a RetinaNet checkpoint?")
    num_anchors = int(sd["head.bbox_pred.weight"].shape[0]) // 4
    if num_anchors % num_aspect_ratios:
        raise ValueError(f"{num_anchors} anchors per location cannot be split into {num_aspect_ratios} aspect ratios")
    perm = anchor_permutation(num_anchors // num_aspect_ratios, num_aspect_ratios)
    num_classes = int(sd["head.cls_score.weight"].shape[0]) // num_anchors

    out: StateDict = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if _IGNORED.match(key):
            continue
        new = _backbone_key(key, fpn_base)
        if new is None:
            m = _SUBNET.match(key)
            if m:
                new = f"head.{m.group(1)}.{int(m.group(2)) // 2}.conv.{m.group(3)}"
            elif _HEAD_OUT.match(key):
                new, value = key, permute_anchor_outputs(value, perm)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys of the detectron2 checkpoint have no retinakit equivalent, e.g. {unknown[:5]}; "
            "only RetinaNet with a ResNet-FPN backbone is supported"
        )
    depth, groups, width = _resnet_layout(sd)
    p6 = sd.get("backbone.top_block.p6.weight")
    out_channels = int(sd[f"backbone.fpn_output{fpn_base}.weight"].shape[0])
    top_block_in = "c5" if p6 is not None and int(p6.shape[1]) != out_channels else "p5"
    num_convs = len(_subnet_layout(sd, "cls_subnet"))
    stem_norm = "FrozenBN" if "backbone.bottom_up.stem.conv1.norm.running_mean" in sd else (
        "GN" if "backbone.bottom_up.stem.conv1.norm.weight" in sd else "")
    fpn_norm = "GN" if f"backbone.fpn_lateral{fpn_base}.norm.weight" in sd else ""

    overrides: list[Any] = ["MODEL.RETINANET.NUM_CLASSES", num_classes]
    if depth not in CONFIGS:
        overrides += ["MODEL.RESNETS.DEPTH", depth]
    if groups != 1:
        overrides += ["MODEL.RESNETS.NUM_GROUPS", groups, "MODEL.RESNETS.WIDTH_PER_GROUP", width]
    if top_block_in != "c5":
        overrides += ["MODEL.FPN.TOP_BLOCK_IN", top_block_in]
    if out_channels != 256:
        overrides += ["MODEL.FPN.OUT_CHANNELS", out_channels]
    if num_convs != 4:
        overrides += ["MODEL.RETINANET.NUM_CONVS", num_convs]
    if stem_norm != "FrozenBN":
        overrides += ["MODEL.RESNETS.NORM", stem_norm]
    if fpn_norm:
        overrides += ["MODEL.FPN.NORM", fpn_norm]
    notes: list[str] = []
    if num_anchors != 9 or num_aspect_ratios != 3:
        notes.append(
            f"{num_anchors} anchors per location ({num_anchors // num_aspect_ratios} sizes x {num_aspect_ratios} ratios): "
            "set MODEL.ANCHOR_GENERATOR.SIZES/ASPECT_RATIOS to the values the model was trained with"
        )
    info: dict[str, Any] = {
        "source": "detectron2",
        "kind": "retinanet",
        "depth": depth,
        "num_classes": num_classes,
        "num_anchors": num_anchors,
        "config": CONFIGS.get(depth, CONFIGS[50]),
        "config_overrides": overrides,
        # config values these weights are wrong without (checked by converters.check_config)
        "requires": {
            "MODEL.RESNETS.STRIDE_IN_1X1": True,
            "INPUT.FORMAT": "BGR",
            "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
            "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
            "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
            "MODEL.RETINANET.BOX_CODER_NAME": "DeltaXYWHBoxCoder",
        },
    }
    if notes:
        info["notes"] = notes
    return out, info
