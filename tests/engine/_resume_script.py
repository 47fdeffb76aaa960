"""Train the dummy model with DefaultTrainer; used by the SIGKILL-and-resume test.

    python _resume_script.py OUTPUT_DIR [--resume]

Prints "ITER <n>" (flushed) after each iteration so the parent can kill it mid-run.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from _engine_trainer import DummyTrainer, tiny_cfg

from retinakit.engine import default_setup
from retinakit.engine.hooks import CallbackHook


def _report(trainer):
    print(f"ITER {trainer.iter}", flush=True)
    time.sleep(0.05)


def main() -> None:
    torch.set_num_threads(1)
    out = sys.argv[1]
    cfg = tiny_cfg(
        out,
        SOLVER__MAX_ITER=16,
        SOLVER__CHECKPOINT_PERIOD=3,
        SOLVER__ACCUMULATE_STEPS=2,
        SOLVER__IMS_PER_BATCH=4,
        SOLVER__EMA__ENABLED=True,
        SOLVER__EMA__DECAY=0.9,
        SOLVER__MAX_TO_KEEP=2,
    )
    default_setup(cfg)
    trainer = DummyTrainer(cfg)
    trainer.register_hooks([CallbackHook(after_step=_report)])
    trainer.resume_or_load(resume="--resume" in sys.argv)
    trainer.train()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
