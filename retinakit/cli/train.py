"""``retinakit train MODEL ...``: ODTK's train command over ``DefaultTrainer`` (as tools/train_net.py).

MODEL is the output: checkpoints, metrics.json, TensorBoard events and the config go to
OUTPUT_DIR (``--logdir``, default ``MODEL`` minus ``.pth`` + ``_logs``); at the end
``model_final.pth`` is copied to MODEL and the resolved config is ``MODEL`` with ``.yaml``.
When MODEL exists the run resumes from OUTPUT_DIR's last checkpoint (``--override`` starts
over), as ODTK resumes from MODEL.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

import torch

from ..config import CfgNode, get_cfg
from .common import checkpoint_classes, flat, load_file, notice, print_equivalent, sidecar_config, write_config
from .odtk import flag_overrides

__all__ = ["build_cfg", "run", "train_worker"]


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """ODTK's model and recipe, then every flag's config values, then ``--opts KEY VALUE``."""
    cfg = get_cfg()
    cfg.merge_from_list(flat(flag_overrides("train", args)))
    cfg.merge_from_list(list(args.opts or []))
    return cfg


def _has_checkpoint(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, "last_checkpoint"))


def decide_resume(cfg: CfgNode, args: argparse.Namespace) -> bool:
    """ODTK resumes when MODEL exists (unless --override): from OUTPUT_DIR's last checkpoint, or,
    when OUTPUT_DIR has none, from MODEL's weights (iteration 0, with a notice)."""
    if args.override or not os.path.exists(args.model):
        return False
    if _has_checkpoint(cfg.OUTPUT_DIR):
        return True
    notice(f"{args.model} exists but {cfg.OUTPUT_DIR} has no checkpoint to resume: training starts from its weights at iteration 0.")
    cfg.MODEL.WEIGHTS = args.model
    return False


def fine_tune_notice(cfg: CfgNode, path: str) -> None:
    """ODTK's one line when the fine-tuned checkpoint has another class count."""
    if not path or not os.path.isfile(path):
        return
    have = checkpoint_classes(load_file(path))
    want = int(cfg.MODEL.RETINANET.NUM_CLASSES)
    if have is not None and have != want:
        notice(f"{path} has {have} classes, --classes is {want}: the classifier is re-initialised, the other weights are loaded.")


def train_worker(cfg: CfgNode, resume: bool, model_path: str) -> dict[str, Any]:
    """One process of the training: set-up, resume or load, train; rank 0 copies the final weights to ``model_path``."""
    from ..engine import DefaultTrainer, default_setup
    from ..utils import comm

    default_setup(cfg)
    cfg.freeze()
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    results = trainer.train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if comm.is_main_process() and os.path.isfile(final):
        tmp = model_path + ".tmp"
        shutil.copyfile(final, tmp)
        os.replace(tmp, model_path)
        print(f"wrote {model_path} (= {final})", flush=True)
    return results


def _guarded(cfg: CfgNode, resume: bool, model_path: str) -> Any:
    """``train_worker`` with tools/train_net.py's exits: user errors 2, non-finite loss 3, signal 128 + n."""
    from ..engine.exits import run_with_exit_codes

    return run_with_exit_codes(train_worker, cfg, resume, model_path)

def check_inputs(args: argparse.Namespace) -> None:
    """Files and folders the flags name exist (before any work)."""
    from .odtk import OdtkFlagError

    files = [("--annotations", args.annotations), ("--val-annotations", args.val_annotations), ("--fine-tune", args.fine_tune)]
    for flag, path in files:
        if path and "://" not in path and not os.path.isfile(path):
            raise OdtkFlagError(f"{flag} {path}: no such file.")
    for flag, path in (("--images", args.images), ("--val-images", args.val_images)):
        if path and not os.path.isdir(path):
            raise OdtkFlagError(f"{flag} {path}: no such folder.")


def run(args: argparse.Namespace) -> int:
    from ..engine import launch

    cfg = build_cfg(args)
    check_inputs(args)
    resume = decide_resume(cfg, args)
    fine_tune_notice(cfg, args.fine_tune or "")
    side = write_config(cfg, sidecar_config(args.model))
    gpus = max(1, torch.cuda.device_count())  # ODTK trains on every visible GPU
    print_equivalent(["tools/train_net.py", "--config-file", side, *(["--resume"] if resume else []),
                      *(["--num-gpus", str(gpus)] if gpus > 1 else [])])
    try:
        launch(_guarded, gpus, args=(cfg, resume, args.model))
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # a spawned process exited: its exit code
        code = getattr(e, "exit_code", None)
        if code is not None:
            return int(code)
        raise
    write_config(cfg, side)  # with the seed the run drew (default_setup)
    return 0
