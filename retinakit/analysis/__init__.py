"""Dataset analysis: reads datasets, configs and models and reports on them.

It uses :mod:`retinakit.data` and :mod:`retinakit.modeling` and is imported by neither.

* :mod:`retinakit.analysis.anchors`: anchor coverage of a dataset and an anchor search.
"""
from __future__ import annotations

__all__: list[str] = []
