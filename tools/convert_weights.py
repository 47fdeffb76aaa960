#!/usr/bin/env python
"""Convert another project's checkpoint into a retinakit checkpoint and matching config.

    python tools/convert_weights.py --source torchvision IN.pth OUT.pth
    python tools/convert_weights.py --source detectron2 model_final_5bd44e.pkl OUT.pth
    python tools/convert_weights.py --source odtk retinanet_rn50fpn.pth OUT.safetensors
    python tools/convert_weights.py --source retinakit output/model_final.pth model_final.safetensors

Writes ``OUT.pth`` = ``{"model": state_dict, "__retinakit__": {source, config, ...}}``
(loads with ``weights_only=True``), or, when OUT ends with ``.safetensors``, a safetensors
file with the same state dict and ``__retinakit__`` as JSON metadata (needs ``pip install
safetensors``; model weights only: it can start a training or evaluation through
``MODEL.WEIGHTS`` but not ``--resume`` one). ``--source retinakit`` converts nothing: it
re-saves the model weights of a retinakit checkpoint (e.g. ``model_final.pth`` without its
optimizer, scheduler and RNG state), typically as ``.safetensors``. Also writes ``OUT.yaml``, a config that inherits from the
retinakit config matching the architecture (``__retinakit__["config"]``, e.g.
``configs/converted/odtk_retinanet_R_50_FPN.yaml``) and sets what this checkpoint needs
(class count, anchors, ...) and ``MODEL.WEIGHTS: OUT.pth``. Use it as is::

    python tools/train_net.py --config-file OUT.yaml --eval-only

detectron2 ``.pkl`` files (model zoo) are read with a restricted unpickler that accepts only
numpy arrays and plain containers (``retinakit.checkpoint.converters.detectron2.load_pkl``);
everything else is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_CONVERSION = "retinakit"  # --source for a retinakit checkpoint: re-save its model weights as they are


def _load(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SystemExit(f"error: input checkpoint not found: {path}")
    try:
        if path.endswith(".pkl"):
            from retinakit.checkpoint.converters.detectron2 import load_pkl

            data = load_pkl(path)
        elif path.endswith(".safetensors"):
            from retinakit.checkpoint import load_safetensors

            data = load_safetensors(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as e:
        raise SystemExit(
            f"error: cannot read {path}: {e}\nretinakit only reads tensors and plain containers. If the file "
            "stores other Python objects (an optimizer or scheduler of another library), save just the model "
            "weights in a trusted environment, e.g. torch.save(ckpt['model'], 'weights.pth'), and convert that."
        ) from None
    except ImportError as e:  # a .safetensors input without the safetensors package
        raise SystemExit(f"error: {e}") from None
    if not isinstance(data, Mapping):
        raise SystemExit(f"error: {path} holds a {type(data).__name__}, not a checkpoint dictionary")
    return dict(data)


def _nested(flat: list[Any]) -> dict[str, Any]:
    """``["A.B.C", value, ...]`` -> ``{"A": {"B": {"C": value}}}``."""
    out: dict[str, Any] = {}
    for key, value in zip(flat[::2], flat[1::2]):
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def write_config(info: dict[str, Any], weights: str, path: str) -> str:
    """Write the config matching the converted ``weights`` to ``path``; returns ``path``."""
    import yaml

    base = info["config"] if os.path.isabs(info["config"]) else os.path.join(REPO_ROOT, info["config"])
    overrides = list(info.get("config_overrides", []))
    if "MODEL.RETINANET.NUM_CLASSES" not in overrides[::2] and "num_classes" in info:
        overrides += ["MODEL.RETINANET.NUM_CLASSES", info["num_classes"]]
    body = _nested([*overrides, "MODEL.WEIGHTS", os.path.abspath(weights)])
    header = [
        f"# Matching config for {os.path.basename(weights)}, converted from {info['source']} weights by",
        "# tools/convert_weights.py. Inherits the architecture from _BASE_ and sets what this checkpoint needs.",
    ]
    for note in info.get("notes", []):
        header.append(f"# NOTE: {note}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n")
        yaml.safe_dump({"_BASE_": base, **body}, f, sort_keys=False, default_flow_style=None)
    return path


def _convert(args: argparse.Namespace, data: dict[str, Any], sd: dict[str, torch.Tensor]) -> tuple[dict, dict[str, Any]]:
    """``(state_dict, info)`` of the output; ``--source retinakit`` keeps both as they are."""
    from retinakit.checkpoint.converters import convert

    if args.source == NO_CONVERSION:
        info = data.get("__retinakit__")
        return sd, dict(info) if isinstance(info, Mapping) else {"source": NO_CONVERSION}
    try:
        return convert(args.source, sd, checkpoint=data, num_aspect_ratios=args.num_aspect_ratios)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: cannot convert {args.input} as a {args.source} checkpoint: {e}") from None


def _save(out: dict, info: dict[str, Any], path: str) -> None:
    """Model weights only, in the format of ``path``'s extension (.safetensors or torch)."""
    from retinakit.checkpoint import MissingSafetensorsError, save_model_weights

    try:
        save_model_weights(out, path, info)
    except MissingSafetensorsError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> int:
    from retinakit.checkpoint.converters import CONVERTERS
    from retinakit.checkpoint.model_loading import extract_state_dict

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=sorted([*CONVERTERS, NO_CONVERSION]),
                        help="project the checkpoint comes from ('retinakit': no conversion, re-save the weights)")
    parser.add_argument("--num-aspect-ratios", type=int, default=3,
                        help="detectron2: aspect ratios per location the model was trained with (default 3)")
    parser.add_argument("--no-config", action="store_true", help="do not write the matching OUT.yaml")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    data = _load(args.input)
    sd = extract_state_dict(data)
    if not sd:
        raise SystemExit(f"error: {args.input} contains no tensors (is it a model checkpoint?)")
    out, info = _convert(args, data, sd)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if "config" in info and not args.no_config:
        info["config_file"] = write_config(info, args.output, os.path.splitext(args.output)[0] + ".yaml")
    _save(out, info, args.output)
    shown = {k: v for k, v in info.items() if k not in ("config_overrides", "notes", "requires")}
    print(f"wrote {args.output}: {len(out)} tensors; " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for note in info.get("notes", []):
        print(f"note: {note}")
    if "config_file" in info:
        print(f"use it with: --config-file {info['config_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
