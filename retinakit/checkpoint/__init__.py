"""Checkpoints: atomic save, exact resume, loading weights (``weights_only=True``), safetensors."""
from .checkpointer import (
    Checkpointer,
    CheckpointWriteError,
    atomic_torch_save,
    get_rng_state,
    load_checkpoint_file,
    set_rng_state,
)
from .model_loading import CheckpointMismatchError, LoadReport, load_model_weights
from .weights_file import (
    MissingSafetensorsError,
    load_safetensors,
    save_model_weights,
    save_safetensors,
)

__all__ = [
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "Checkpointer",
    "LoadReport",
    "MissingSafetensorsError",
    "atomic_torch_save",
    "get_rng_state",
    "load_checkpoint_file",
    "load_model_weights",
    "load_safetensors",
    "save_model_weights",
    "save_safetensors",
    "set_rng_state",
]
