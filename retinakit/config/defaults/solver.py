"""SOLVER.*, TEST.* and HOOKS defaults (training engine, evaluation, checkpoints).

LR scaling rule: BASE_LR belongs to the global batch IMS_PER_BATCH. Changing the batch by
k: multiply BASE_LR by k and divide MAX_ITER, STEPS and WARMUP_ITERS by k (set
REFERENCE_WORLD_SIZE to have this done automatically when the process count changes).
"""
from ..config import CfgNode as CN


def add_solver_config(_C: CN) -> None:
    _C.SOLVER = CN()
    # Global batch of one optimizer step, over all processes and accumulated micro-batches.
    # Each process loads IMS_PER_BATCH / (world size * ACCUMULATE_STEPS) images per micro-batch.
    _C.SOLVER.IMS_PER_BATCH = 16
    # Micro-batches whose gradients are accumulated into one optimizer step (1 = none).
    _C.SOLVER.ACCUMULATE_STEPS = 1
    # "SGD" (momentum, NESTEROV) or "AdamW" (BETAS).
    _C.SOLVER.OPTIMIZER = "SGD"
    # LR for the global batch IMS_PER_BATCH (see the scaling rule above).
    _C.SOLVER.BASE_LR = 0.01
    # Final LR of the cosine schedule.
    _C.SOLVER.BASE_LR_END = 0.0
    _C.SOLVER.MOMENTUM = 0.9  # SGD momentum
    _C.SOLVER.NESTEROV = False  # Nesterov momentum for SGD
    # AdamW betas.
    _C.SOLVER.BETAS = (0.9, 0.999)
    _C.SOLVER.WEIGHT_DECAY = 1e-4  # L2 weight decay (decoupled for AdamW)
    # Weight decay of normalisation layers' parameters (BN/GN scale and shift).
    _C.SOLVER.WEIGHT_DECAY_NORM = 0.0
    # Weight decay of biases of other layers.
    _C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
    # Number of optimizer steps (iterations) of the training.
    _C.SOLVER.MAX_ITER = 90000
    # "WarmupMultiStepLR" (x GAMMA at each of STEPS) or "WarmupCosineLR" (to BASE_LR_END).
    _C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    # Iterations where the LR is multiplied by GAMMA (WarmupMultiStepLR).
    _C.SOLVER.STEPS = (60000, 80000)
    _C.SOLVER.GAMMA = 0.1  # LR multiplier at each of STEPS
    # Warmup length in iterations, starting factor and "linear" (ramp) or "constant".
    _C.SOLVER.WARMUP_ITERS = 1000
    _C.SOLVER.WARMUP_FACTOR = 1.0 / 1000  # LR factor at iteration 0 of the warmup
    _C.SOLVER.WARMUP_METHOD = "linear"  # "linear" ramp to 1 or "constant" factor during warmup
    # Save a checkpoint every N iterations (model_final.pth at the end in any case).
    _C.SOLVER.CHECKPOINT_PERIOD = 5000
    # Keep only the newest N periodic checkpoints (0 keeps all; model_final/model_best are kept).
    _C.SOLVER.MAX_TO_KEEP = 0
    # A periodic checkpoint that cannot be written (disk full, I/O error, read-only folder):
    # "stop" ends the run with one message (the previous checkpoint stays the latest);
    # "retry" logs the message, keeps training and tries again at the next period.
    _C.SOLVER.CHECKPOINT_WRITE_ERROR = "stop"
    # Process count the LR/batch/schedule were written for; when > 0 and different from the
    # actual count, everything is scaled linearly (engine.solver.auto_scale_workers). 0 = off.
    _C.SOLVER.REFERENCE_WORLD_SIZE = 0
    # Convert the model to torch.channels_last memory format (faster convolutions with AMP on GPUs).
    _C.SOLVER.CHANNELS_LAST = False

    _C.SOLVER.AMP = CN()
    # Automatic mixed precision (autocast) for training.
    _C.SOLVER.AMP.ENABLED = False
    # "float16" (with a GradScaler) or "bfloat16" (no scaler; also works on CPU).
    _C.SOLVER.AMP.DTYPE = "float16"

    _C.SOLVER.CLIP_GRADIENTS = CN()
    # Clip gradients before the optimizer step (after unscaling with AMP fp16).
    _C.SOLVER.CLIP_GRADIENTS.ENABLED = False
    # "norm" (total norm of all gradients) or "value" (each element).
    _C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    _C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 10.0  # max total norm ("norm") or max absolute element ("value")
    # p of the p-norm for CLIP_TYPE "norm".
    _C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

    _C.SOLVER.EMA = CN()
    # Keep an exponential moving average of the weights; evaluation and model_final use it.
    _C.SOLVER.EMA.ENABLED = False
    _C.SOLVER.EMA.DECAY = 0.999  # EMA weight of the previous average at each step

    # Write the console line / metrics.json / TensorBoard every N iterations.
    _C.SOLVER.LOG_PERIOD = 20

    _C.TEST = CN()
    # Evaluate every N iterations (0: only at the end of training).
    _C.TEST.EVAL_PERIOD = 0
    # Maximum detections kept per image.
    _C.TEST.DETECTIONS_PER_IMAGE = 100
    # Images per batch at inference (per process).
    _C.TEST.IMS_PER_BATCH = 1
    # Metric that decides model_best.pth, e.g. "bbox/AP" (empty: no best checkpoint).
    _C.TEST.BEST_METRIC = "bbox/AP"
    # "max" or "min": whether a larger or a smaller BEST_METRIC is better.
    _C.TEST.BEST_MODE = "max"
    # Seconds between scans of OUTPUT_DIR by `train_net.py --eval-only --watch`.
    _C.TEST.WATCH_INTERVAL = 10.0
    # Evaluate with faster-coco-eval (C++) when installed instead of pycocotools; the metrics
    # agree to 1e-15 (tests/evaluation/test_faster_coco_eval.py). Falls back with a warning.
    _C.TEST.FAST_COCO_EVAL = False
    # COCO evaluation also reports recall per box size at these score thresholds (a box is
    # found by a detection of its class with score >= t and IoU >= 0.5, matched one to one as
    # COCO does; docs/getting_started.md, "Recall per box size"). Empty: no recall report.
    _C.TEST.RECALL_SCORE_THRESHOLDS = [0.05, 0.3, 0.5]
    # Edges (sqrt of the box area, pixels of the original image) of the finer size bins of that
    # report, besides COCO's small/medium/large: [8, 16, 32] gives 0-8, 8-16, 16-32, over 32 px.
    _C.TEST.RECALL_SIZE_EDGES = [8, 16, 32]

    # Extra hooks named in HOOK_REGISTRY, appended after the default hooks. Each is built
    # as HOOK_REGISTRY.get(name)(cfg, trainer).
    _C.HOOKS = []
