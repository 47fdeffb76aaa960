"""Deprecated location of :mod:`retinakit.analysis.anchors` (kept for one release).

Importing it warns (``DeprecationWarning``) and re-exports the same public names.
"""
from __future__ import annotations

import warnings

from ..analysis import anchors as _anchors
from ..analysis.anchors import *  # noqa: F403  (the public names, listed once in retinakit.analysis.anchors)

__all__ = list(_anchors.__all__)
warnings.warn(
    "retinakit.modeling.anchor_analysis moved to retinakit.analysis.anchors; the old path will be removed "
    "in the next release.", DeprecationWarning, stacklevel=2,
)
