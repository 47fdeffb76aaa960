#!/usr/bin/env python
"""Convert another project's checkpoint into a retinakit checkpoint.

    python tools/convert_weights.py --source torchvision IN.pth OUT.pth

The output is ``{"model": state_dict, "__retinakit__": {source, version, config, ...}}``
and loads with ``weights_only=True``. ``config`` names the retinakit config that
matches the converted architecture (use it with ``MODEL.WEIGHTS OUT.pth``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def _load(path: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"error: input checkpoint not found: {path}")
    if path.endswith(".pkl"):
        import pickle

        with open(path, "rb") as f:  # detectron2 model-zoo pickles hold only numpy arrays
            data = pickle.load(f, encoding="latin1")
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    return data


def main(argv=None) -> int:
    from retinakit.checkpoint.converters import CONVERTERS, convert
    from retinakit.checkpoint.model_loading import extract_state_dict

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=sorted(CONVERTERS), help="project the checkpoint comes from")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    data = _load(args.input)
    sd = extract_state_dict(data)
    if not sd:
        raise SystemExit(f"error: {args.input} contains no tensors (is it a model checkpoint?)")
    try:
        out, info = convert(args.source, sd)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: cannot convert {args.input} as a {args.source} checkpoint: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    torch.save({"model": out, "__retinakit__": info}, tmp)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {len(out)} tensors; " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
