#!/usr/bin/env python
"""Benchmarks: each figure is a ratio against a named peer measured in the same run.

    python tools/benchmark.py postprocess [--batch-sizes 1 8] [--json out.json]
    python tools/benchmark.py data --config-file CFG
    python tools/benchmark.py data-load [--images N --annotations M] [--ddp-memory]
    python tools/benchmark.py train --config-file CFG
    python tools/benchmark.py inference [--config-file CFG]
    python tools/benchmark.py levels [--sizes 512x512 800x1333] [--levels p3-p7 p2-p7]
    python tools/benchmark.py backbones [--size 512 512]
    python tools/benchmark.py small-objects [--backbones R10 MNV3L] [--seeds 0 1] [--iters 400] [--output DIR]
    python tools/benchmark.py int8 --config-file CFG --weights W --calibration-images DIR --val-images DIR --val-annotations JSON

Each subcommand lives in tools/benchmarks/<name>.py (``-`` in the name is ``_`` in the file) and defines
``add_arguments(parser)`` and ``main(args)``. Results go to docs/benchmarks.md by hand,
with the command, the machine and the date.
"""
import argparse
import importlib
import os
import sys

SUBCOMMANDS = ("postprocess", "data", "data-load", "train", "inference", "backbones", "levels", "small-objects", "int8")


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in SUBCOMMANDS:
        try:
            modules[name] = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmarks.{name.replace('-', '_')}":
                raise
            continue
        p = sub.add_parser(name, help=(modules[name].__doc__ or "").strip().splitlines()[0])
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
