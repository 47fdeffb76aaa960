"""Weight converters from other projects' checkpoints to retinakit state dicts.

Each converter module registers a function ``convert(state_dict, ...) -> (state_dict, info)``
in ``CONVERTERS`` and a detector ``matches(state_dict) -> bool`` used to recognise the
source automatically when such a file is given as ``MODEL.WEIGHTS``. A converter may take
keyword arguments: ``checkpoint`` (the whole loaded file, for metadata stored beside the
state dict, e.g. ODTK's anchor ratios/scales) and source-specific options; :func:`convert`
passes only those it accepts.

Built in: ``torchvision`` (RetinaNet v1/v2, ImageNet ResNets), ``detectron2`` (RetinaNet
``.pkl``/``.pth``) and ``odtk`` (NVIDIA retinanet-examples). ``info["config"]`` names the
retinakit config the converted weights need and ``info["config_overrides"]`` (when present)
the ``KEY, VALUE`` pairs that complete it for this checkpoint.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import detectron2 as _detectron2
from . import odtk as _odtk
from . import torchvision as _torchvision

StateDict = dict[str, torch.Tensor]
Converter = Callable[..., tuple[StateDict, dict]]

CONVERTERS: dict[str, Converter] = {
    "torchvision": _torchvision.convert,
    "detectron2": _detectron2.convert,
    "odtk": _odtk.convert,
}
# Checked in this order by detect_source (ODTK and detectron2 keys never look like torchvision's).
DETECTORS: dict[str, Callable[[StateDict], bool]] = {
    "torchvision": _torchvision.matches,
    "detectron2": _detectron2.matches,
    "odtk": _odtk.matches,
}


def register_converter(name: str, convert: Converter, matches: Callable[[StateDict], bool]) -> None:
    """Add a converter (e.g. from a project package) for ``--source name``."""
    CONVERTERS[name] = convert
    DETECTORS[name] = matches


def detect_source(state_dict: StateDict) -> str | None:
    """Name of the converter whose key pattern ``state_dict`` follows, or None."""
    for name, matches in DETECTORS.items():
        if matches(state_dict):
            return name
    return None


def _accepted(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def convert(source: str, state_dict: StateDict, checkpoint: Mapping[str, Any] | None = None, **options: Any) -> tuple[StateDict, dict]:
    """Convert with the converter registered as ``source``.

    ``checkpoint`` (the whole loaded file) and ``options`` reach the converter only if its
    signature has them; options it does not take are ignored.
    """
    if source not in CONVERTERS:
        raise KeyError(f"Unknown weight source '{source}'; available: {', '.join(sorted(CONVERTERS))}.")
    fn = CONVERTERS[source]
    kwargs: dict[str, Any] = dict(options)
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    return fn(state_dict, **_accepted(fn, kwargs))


def check_config(info: Mapping[str, Any], cfg: Any) -> list[str]:
    """Config values that contradict what converted weights need (``info["requires"]``).

    Shapes cannot reveal them (e.g. where a bottleneck's stride sits, the channel order, the
    anchor offset), so weights loaded with such a config would give wrong detections
    silently. Returns one ``"KEY: config has X, the weights need Y"`` line per mismatch.
    """
    problems = []
    for key, needed in dict(info.get("requires", {})).items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        have = node
        if isinstance(needed, (list, tuple)):
            same = _as_lists(have) == _as_lists(needed)
        else:
            same = have == needed
        if not same:
            problems.append(f"{key}: config has {have!r}, the {info.get('source', 'converted')} weights need {needed!r}")
    return problems


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


__all__ = ["CONVERTERS", "DETECTORS", "check_config", "convert", "detect_source", "register_converter"]
