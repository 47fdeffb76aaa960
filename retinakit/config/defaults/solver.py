"""SOLVER.* and TEST.* defaults."""
from ..config import CfgNode as CN


def add_solver_config(_C: CN) -> None:
    _C.SOLVER = CN()
    _C.SOLVER.IMS_PER_BATCH = 16  # global batch over all processes
    _C.SOLVER.BASE_LR = 0.01
    _C.SOLVER.MOMENTUM = 0.9
    _C.SOLVER.WEIGHT_DECAY = 1e-4
    _C.SOLVER.MAX_ITER = 90000
    _C.SOLVER.STEPS = (60000, 80000)
    _C.SOLVER.GAMMA = 0.1
    _C.SOLVER.WARMUP_ITERS = 1000
    _C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
    _C.SOLVER.WARMUP_METHOD = "linear"
    _C.SOLVER.CHECKPOINT_PERIOD = 5000
    _C.SOLVER.AMP = CN()
    _C.SOLVER.AMP.ENABLED = False

    _C.TEST = CN()
    # Evaluate every N iterations (0: only at the end of training).
    _C.TEST.EVAL_PERIOD = 0
    _C.TEST.DETECTIONS_PER_IMAGE = 100
