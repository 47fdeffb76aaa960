"""Training engine: trainers, hooks, defaults, distributed launch."""
from .defaults import (
    DefaultPredictor,
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
)
from .exits import EXIT_NON_FINITE, run_with_exit_codes
from .hooks import HOOK_REGISTRY
from .launch import launch
from .solver import (
    WarmupLRScheduler,
    auto_scale_workers,
    build_lr_scheduler,
    build_optimizer,
)
from .train_loop import (
    AMPTrainer,
    HookBase,
    NonFiniteLossError,
    SimpleTrainer,
    TrainerBase,
    TrainingInterrupted,
)

__all__ = [
    "EXIT_NON_FINITE",
    "HOOK_REGISTRY",
    "AMPTrainer",
    "DefaultPredictor",
    "DefaultTrainer",
    "HookBase",
    "NonFiniteLossError",
    "SimpleTrainer",
    "TrainerBase",
    "TrainingInterrupted",
    "WarmupLRScheduler",
    "auto_scale_workers",
    "build_lr_scheduler",
    "build_optimizer",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "launch",
    "run_with_exit_codes",
]
