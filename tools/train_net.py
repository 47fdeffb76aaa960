#!/usr/bin/env python
"""Train or evaluate a retinakit detector described by a config.

    python tools/train_net.py --config-file CFG [--resume] [--num-gpus N] [KEY VALUE ...]
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --eval-only --watch   # beside a running training

Components from your own packages are used by listing them in CUSTOM_IMPORTS.
Errors in the config or the data stop the run before training starts, with one message
and exit code 2 (no traceback). A non-finite loss stops training with exit code 3.
SIGTERM/SIGINT during training save a checkpoint of the current iteration and exit with
128 + the signal number (143, 130) after one log line naming the checkpoint; a second
signal exits at once. Under torchrun, a restarted group resumes by itself.
Multi-machine: run it on every machine with --num-machines M --machine-rank R
--dist-url tcp://HOST0:PORT; or start it with torchrun (one process per device).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinakit.checkpoint import Checkpointer, atomic_torch_save, load_checkpoint_file
from retinakit.config import ConfigError, get_cfg
from retinakit.engine import (
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    launch,
)
from retinakit.engine.exits import run_with_exit_codes
from retinakit.engine.hooks import flatten_results
from retinakit.engine.solver import auto_scale_workers
from retinakit.utils import comm
from retinakit.utils.events import write_metrics_row

logger = logging.getLogger("retinakit.train_net")

EXIT_USER_ERROR = 2  # = retinakit.utils.errors.EXIT_USER_ERROR


def user_error_message(e: BaseException) -> str | None:
    """The message of an error the user must fix (config, data, weights file), else None."""
    from retinakit.utils.errors import user_error_message as message

    return message(e)


def setup(args: Any) -> Any:
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg = auto_scale_workers(cfg, comm.get_world_size())
    default_setup(cfg, args)
    cfg.freeze()
    return cfg


def _checkpoints(out_dir: str) -> list[str]:
    """Complete checkpoints of ``out_dir`` by iteration (temp files start with '.')."""
    if not os.path.isdir(out_dir):
        return []
    names = [n for n in os.listdir(out_dir) if n.startswith("model_") and n.endswith(".pth") and n != "model_best.pth"]
    return sorted(names, key=lambda n: (n == "model_final.pth", n))


def _evaluate_file(cfg: Any, model: Any, path: str) -> tuple[int, dict[str, Any]]:
    ckpt = load_checkpoint_file(path)
    it = int(ckpt.get("iteration", -1))
    Checkpointer(model, save_to_disk=False, cfg=cfg)._restore(ckpt, path, checkpointables=[])
    return it, DefaultTrainer.test(cfg, model)


def watch(cfg: Any, model: Any) -> dict[str, Any]:
    """Evaluate every new checkpoint of OUTPUT_DIR until model_final.pth has been evaluated.

    Each result is appended to OUTPUT_DIR/metrics.json; the best (TEST.BEST_METRIC,
    TEST.BEST_MODE) is copied to model_best.pth.
    """
    out = cfg.OUTPUT_DIR
    metric, mode = cfg.TEST.BEST_METRIC or "bbox/AP", cfg.TEST.BEST_MODE
    done: set = set()
    best: float | None = None
    last: dict[str, Any] = {}
    logger.info(f"Watching {out} for new checkpoints (every {cfg.TEST.WATCH_INTERVAL}s)")
    while True:
        names = comm.all_gather(_checkpoints(out))[0]  # rank 0's view, so every rank agrees
        for name in [n for n in names if n not in done]:
            done.add(name)
            path = os.path.join(out, name)
            try:
                it, last = _evaluate_file(cfg, model, path)
            except Exception as e:  # noqa: BLE001 - unreadable (e.g. deleted by keep-last-N meanwhile): skip it
                logger.warning(f"Skipping {name}: {type(e).__name__}: {e}")
                continue
            flat = flatten_results(last)
            if comm.is_main_process():
                write_metrics_row(os.path.join(out, "metrics.json"), {"iteration": it, "checkpoint": name, **flat})
                value = flat.get(metric)
                if value is not None and (best is None or (value > best if mode == "max" else value < best)):
                    best = value
                    atomic_torch_save(load_checkpoint_file(path), os.path.join(out, "model_best.pth"))
                    logger.info(f"New best {metric} = {value:.4f} ({name}) -> model_best.pth")
            if name == "model_final.pth":
                return last
        time.sleep(cfg.TEST.WATCH_INTERVAL)


def main(args: Any) -> Any:
    cfg = setup(args)
    if args.eval_only:
        model = DefaultTrainer.build_model(cfg)
        if args.watch:
            return watch(cfg, model)
        ck = Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False, cfg=cfg)
        path = cfg.MODEL.WEIGHTS or ck.get_checkpoint_file()
        if not path:
            raise ConfigError("--eval-only needs MODEL.WEIGHTS, or a checkpoint in OUTPUT_DIR (last_checkpoint).")
        ck.load(path, checkpointables=[])
        return DefaultTrainer.test(cfg, model)
    if args.watch:
        raise ConfigError("--watch only works together with --eval-only.")
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def guarded_main(args: Any) -> Any:
    """``main`` with user errors turned into one message and an exit code (in every process)."""
    return run_with_exit_codes(main, args)


def run(argv: list[str] | None = None) -> int:
    args = default_argument_parser().parse_args(argv)
    misplaced = [o for o in args.opts if isinstance(o, str) and o.startswith("--")]
    if misplaced:
        print(f"ERROR: {' '.join(misplaced)} must come before the KEY VALUE overrides "
              f"(everything after the first override is read as overrides).", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        launch(
            guarded_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # a spawned process exited: propagate its exit code
        code = getattr(e, "exit_code", None)
        if code is not None:
            return int(code)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(run())
