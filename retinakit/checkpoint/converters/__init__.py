"""Weight converters from other projects' checkpoints to retinakit state dicts.

Each converter module registers a function ``convert(state_dict) -> (state_dict, info)``
in ``CONVERTERS`` and a detector ``matches(state_dict) -> bool`` used to recognise the
source automatically when such a file is given as ``MODEL.WEIGHTS``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from . import torchvision as _torchvision

StateDict = Dict[str, torch.Tensor]
Converter = Callable[[StateDict], Tuple[StateDict, dict]]

CONVERTERS: Dict[str, Converter] = {"torchvision": _torchvision.convert}
DETECTORS: Dict[str, Callable[[StateDict], bool]] = {"torchvision": _torchvision.matches}


def register_converter(name: str, convert: Converter, matches: Callable[[StateDict], bool]) -> None:
    """Add a converter (e.g. from a project package) for ``--source name``."""
    CONVERTERS[name] = convert
    DETECTORS[name] = matches


def detect_source(state_dict: StateDict) -> Optional[str]:
    """Name of the converter whose key pattern ``state_dict`` follows, or None."""
    for name, matches in DETECTORS.items():
        if matches(state_dict):
            return name
    return None


def convert(source: str, state_dict: StateDict) -> Tuple[StateDict, dict]:
    """Convert with the converter registered as ``source``."""
    if source not in CONVERTERS:
        raise KeyError(f"Unknown weight source '{source}'; available: {', '.join(sorted(CONVERTERS))}.")
    return CONVERTERS[source](state_dict)


__all__ = ["CONVERTERS", "convert", "detect_source", "register_converter"]
