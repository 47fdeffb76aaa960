"""The ``retinakit`` console command: NVIDIA retinanet-examples' (ODTK) command line over retinakit.

    retinakit train model.pth --backbone ResNet18FPN --images DIR --annotations train.json --classes 2
    retinakit infer model.pth --images DIR --annotations val.json --output detections.json
    retinakit export model.pth engine.plan --int8 --calibration-images DIR

A thin layer: every ODTK flag becomes config values through one table (:mod:`.odtk`), and
the run calls the same functions as ``tools/train_net.py``, ``tools/infer.py`` and
``tools/deploy.py``. Each run prints the equivalent ``tools/*.py --config-file`` command and
writes the resolved config beside its outputs. See docs/odtk_migration.md.
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
