"""Checks of the pyramid levels a RetinaNet config asks for (P2 and the anchor sizes per level).

Run when the model is built (:meth:`RetinaNet.from_config`), so a wrong level list is a
one-line :class:`~retinakit.config.ConfigError` naming the keys and the fix before any
training, evaluation or anchor analysis starts.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..config import CfgNode, ConfigError
from .backbone.backbone import describe_features, out_features_key

__all__ = ["check_anchor_levels", "check_head_in_features"]

_LEVEL = re.compile(r"^p(\d+)$")


def _fpn_hint(backbone: nn.Module, stride: int) -> str:
    """How to obtain a pyramid level of ``stride`` from an FPN backbone (empty for other backbones)."""
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is None or not hasattr(bottom_up, "output_shape"):
        return ""
    shapes = bottom_up.output_shape()
    have = [name for name, spec in shapes.items() if spec.stride == stride]
    where = f"the bottom-up network ({type(bottom_up).__name__}) outputs {describe_features(shapes)}"
    if have:
        return f"{where}: add '{have[0]}' to MODEL.FPN.IN_FEATURES (finest first)"
    return (
        f"{where}, none of stride {stride}: if it has a stride-{stride} stage (ResNet: 'res2'), add it to "
        f"{out_features_key(bottom_up)} and to MODEL.FPN.IN_FEATURES; a backbone without one cannot give this level"
    )


def check_head_in_features(cfg: CfgNode, backbone: nn.Module, in_features: Sequence[str]) -> None:
    """Every ``MODEL.RETINANET.IN_FEATURES`` entry is a backbone output; else ConfigError with the fix.

    A missing ``p{k}`` finer than the pyramid (``p2`` on a P3-P7 FPN) explains how to get a
    stride-``2^k`` level: which bottom-up feature to add to which key, or that there is none.
    """
    shapes = backbone.output_shape()  # type: ignore[operator]  # a retinakit Backbone
    missing = [f for f in in_features if f not in shapes]
    if not in_features:
        raise ConfigError("MODEL.RETINANET.IN_FEATURES is empty: name the backbone outputs the head runs on, e.g. ['p3', ..., 'p7'].")
    if not missing:
        return
    base = (
        f"MODEL.RETINANET.IN_FEATURES names {missing}, which backbone '{cfg.MODEL.BACKBONE.NAME}' does not produce "
        f"(it has {describe_features(shapes)})"
    )
    strides = [s.stride for s in shapes.values() if s.stride]
    levels = {f: int(m.group(1)) for f in missing if (m := _LEVEL.match(f))}
    finer = [f for f in missing if f in levels and strides and 2 ** levels[f] < min(strides)]
    if finer:
        stride = 2 ** levels[finer[0]]
        hint = _fpn_hint(backbone, stride)
        fix = f"for {finer[0]} (stride {stride}) {hint}; " if hint else ""
        raise ConfigError(f"{base}: {fix}or remove {finer} from MODEL.RETINANET.IN_FEATURES.")
    raise ConfigError(f"{base}: use names from that list.")


def _per_level_count(values: Sequence) -> int | None:
    """Number of per-level lists in ``values`` (``None``: a single list for every level)."""
    values = list(values)
    if not values or not isinstance(values[0], (list, tuple)) or len(values) == 1:
        return None
    return len(values)


def _suggest_sizes(strides: Sequence[int]) -> str:
    """``SIZES`` with one list per level at RetinaNet's default base size, 4 x the stride."""
    return "[" + ", ".join(f"[{4 * int(s)}]" for s in strides) + "]"


def check_anchor_levels(cfg: CfgNode, in_features: Sequence[str], strides: Sequence[int]) -> None:
    """``MODEL.ANCHOR_GENERATOR.SIZES`` / ``ASPECT_RATIOS`` give one list per head level (or one in all).

    Checked for the built-in ``DefaultAnchorGenerator`` only (other generators may read the
    keys differently). ``strides``: the stride of each entry of ``in_features``.
    """
    a = cfg.MODEL.ANCHOR_GENERATOR
    if a.NAME != "DefaultAnchorGenerator":
        return
    n = len(in_features)
    levels = ", ".join(f"{f} (stride {s})" for f, s in zip(in_features, strides))
    count = _per_level_count(a.SIZES)
    if count is not None and count != n:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.SIZES has {count} lists but MODEL.RETINANET.IN_FEATURES has {n} levels ({levels}): "
            f"give one size list per level, finest first (e.g. 4 x stride: {_suggest_sizes(strides)}), or a single list for all levels."
        )
    count = _per_level_count(a.ASPECT_RATIOS)
    if count is not None and count != n:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS has {count} lists but MODEL.RETINANET.IN_FEATURES has {n} levels ({levels}): "
            "give one ratio list per level or a single list for all levels (e.g. [[0.5, 1.0, 2.0]])."
        )
