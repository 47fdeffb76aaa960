"""Load weights into a model with precise messages about what does not fit.

* retinakit checkpoints (``{"model": state_dict, ...}``) and bare state dicts load directly;
* torchvision RetinaNet / ImageNet ResNet, detectron2 and ODTK weights are recognised by
  their key names and converted on the fly; detectron2's and ODTK's need the ``cfg`` the
  model was built from (checked against what they require; refused without one);
* a parameter whose shape depends on the class count (``model.class_specific_keys``) is
  skipped with a warning when the counts differ (fine-tuning on another dataset);
* any other shape mismatch, or keys the model does not have, raise
  :class:`CheckpointMismatchError` naming the keys and shapes (another architecture);
* keys the checkpoint lacks are reported in one warning (e.g. backbone-only weights), except
  BatchNorm counters and the training-only state a model names in ``training_state_keys``
  (e.g. RetinaNet's moving loss normalizer), which keep their initial values.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config.config import CfgNode
from ..utils.errors import UserInputError
from .converters import check_config, convert, detect_source

__all__ = ["CheckpointMismatchError", "LoadReport", "extract_state_dict", "load_model_weights"]

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError, UserInputError):
    """The checkpoint does not fit the model (another architecture or backbone depth)."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped_class_specific: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    converted_from: str = ""


def _group(keys: list[str], depth: int = 2) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        g = ".".join(k.split(".")[:depth])
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items()))


_STATE_KEYS = ("model", "state_dict", "model_state_dict")


def _state_dict_holder(checkpoint: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(the mapping of the state dict's tensors, the mapping around it with the metadata).

    Follows ``model`` / ``state_dict`` / ``model_state_dict`` entries down, so an ODTK file
    (``{"backbone", "classes", "state_dict", ...}``) is found also when a Checkpointer wrapped
    it as ``{"model": file}``; its metadata (anchors, classes) is the second mapping."""
    outer = checkpoint
    while True:
        key = next((k for k in _STATE_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if key is None:
            return checkpoint, outer
        outer, checkpoint = checkpoint, checkpoint[key]


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint (``model`` / ``state_dict`` entries, nested, or the dict itself)."""
    checkpoint = _state_dict_holder(checkpoint)[0]
    sd = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _lacking(sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Model keys absent from ``sd`` under the two-level prefixes ``sd`` has (e.g. ``backbone.bottom_up``):
    for backbone-only weights, the backbone keys they miss, not the FPN and head they never had."""
    prefixes = tuple({".".join(k.split(".")[:2]) + "." for k in sd})
    return [k for k in model_sd if k not in sd and k.startswith(prefixes) and not k.endswith("num_batches_tracked")]


def _foreign_source(sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]) -> str | None:
    """The converter for ``sd``: None when every key is one of this model's, else the project
    whose key pattern ``sd`` follows (some of detectron2's keys, ``head.cls_score.*``, coincide
    with retinakit's, so a partial overlap does not make a state dict native)."""
    if all(k in model_sd for k in sd):
        return None
    return detect_source(dict(sd))


def _check_requirements(info: Mapping[str, Any], cfg: CfgNode | None, source: str) -> None:
    """Converted weights also need config values that shapes cannot reveal (channel order,
    stride placement, anchor offset, box coder): refuse a config that contradicts them, and
    refuse to load them without a config to check (never skip the check silently)."""
    if not info.get("requires"):
        return
    if cfg is None:
        raise CheckpointMismatchError(
            f"The weights in {source} were converted from {info.get('source', 'another project')} and need config values "
            f"that their shapes cannot reveal ({', '.join(sorted(info['requires']))}), but no config was given to check: "
            "pass the config the model was built from (load_model_weights(..., cfg=cfg), Checkpointer(..., cfg=cfg))."
        )
    problems = check_config(info, cfg)
    if problems:
        raise CheckpointMismatchError(
            f"The weights in {source} were converted from {info.get('source', 'another project')} and need "
            "config values this config does not have; detections would be silently wrong:\n  "
            + "\n  ".join(problems)
            + f"\nUse the config written next to the converted weights ({info.get('config', 'OUT.yaml')})."
        )


def load_model_weights(
    model: nn.Module, checkpoint: Mapping[str, Any], source: str = "checkpoint", cfg: CfgNode | None = None
) -> LoadReport:
    """Load ``checkpoint`` into ``model``; see the module docstring for the rules.

    ``cfg`` (the config ``model`` was built from) is checked against what converted weights
    require (``__retinakit__["requires"]``, or the requirements of an on-the-fly conversion
    from detectron2 / ODTK). Such weights without ``cfg`` raise :class:`CheckpointMismatchError`;
    retinakit checkpoints and torchvision weights need no config.
    """
    report = LoadReport()
    sd = extract_state_dict(checkpoint)
    target = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    model_sd = target.state_dict()
    info = checkpoint.get("__retinakit__", {}) if isinstance(checkpoint.get("__retinakit__"), Mapping) else {}
    origin = _foreign_source(sd, model_sd)
    if origin is not None:
        sd, info = convert(origin, sd, checkpoint=_state_dict_holder(checkpoint)[1])  # + metadata (ODTK anchors, classes)
        report.converted_from = origin
        logger.info("Converted %s weights from %s (%s).", origin, source, info.get("kind", ""))
    _check_requirements(info, cfg, source)
    class_prefixes = tuple(getattr(target, "class_specific_keys", ()))
    usable: dict[str, torch.Tensor] = {}
    bad_shapes: list[tuple[str, tuple, tuple]] = []
    unexpected: list[str] = []
    for key, value in sd.items():
        if key not in model_sd:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(model_sd[key].shape):
            entry = (key, tuple(value.shape), tuple(model_sd[key].shape))
            (report.skipped_class_specific if key.startswith(class_prefixes) else bad_shapes).append(entry)
        else:
            usable[key] = value
    if bad_shapes or unexpected:
        lines = [f"  {k}: checkpoint {s} vs model {m}" for k, s, m in bad_shapes[:10]]
        if unexpected:
            lines.append(f"  keys the model does not have: {_group(unexpected, 3)}")
            lacking = _lacking(sd, model_sd)
            if lacking:
                lines.append(f"  keys of the model the checkpoint lacks (in the parts it covers): {_group(lacking, 3)}")
        raise CheckpointMismatchError(
            f"The weights in {source} do not fit this model ({len(bad_shapes)} shape mismatches, "
            f"{len(unexpected)} unknown keys):\n" + "\n".join(lines) +
            "\nIs it a checkpoint of another architecture (e.g. another MODEL.RESNETS.DEPTH, MODEL.MOBILENETV3.VARIANT, "
            "NUM_CONVS, anchor count or FPN setting)? Use the config the checkpoint was trained with."
        )
    if not usable:
        raise CheckpointMismatchError(f"None of the {len(sd)} tensors in {source} matches a parameter of this model.")
    for key, ckpt_shape, model_shape in report.skipped_class_specific:
        logger.warning(
            "Skipped %s from %s: shape %s in the checkpoint vs %s in the model (different class count); "
            "it keeps its initialisation.", key, source, ckpt_shape, model_shape,
        )
    target.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    skipped = {s[0] for s in report.skipped_class_specific}
    optional = ("num_batches_tracked", *getattr(target, "training_state_keys", ()))  # counters, training-only state
    report.missing = sorted(k for k in model_sd if k not in usable and k not in skipped and k.split(".")[-1] not in optional)
    if report.missing:
        logger.warning("%d tensors of the model are not in %s and keep their initialisation: %s",
                       len(report.missing), source, _group(report.missing))
    return report
