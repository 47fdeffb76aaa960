"""Checkpoints: atomic save, exact resume, loading weights (``weights_only=True``)."""
from .checkpointer import (
    Checkpointer,
    atomic_torch_save,
    get_rng_state,
    load_checkpoint_file,
    set_rng_state,
)
from .model_loading import CheckpointMismatchError, LoadReport, load_model_weights

__all__ = [
    "CheckpointMismatchError",
    "Checkpointer",
    "LoadReport",
    "atomic_torch_save",
    "get_rng_state",
    "load_checkpoint_file",
    "load_model_weights",
    "set_rng_state",
]
