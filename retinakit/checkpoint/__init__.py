"""Checkpoints: atomic save, exact resume, loading weights (``weights_only=True``)."""
from .checkpointer import Checkpointer, atomic_torch_save, get_rng_state, load_checkpoint_file, set_rng_state

__all__ = ["Checkpointer", "atomic_torch_save", "get_rng_state", "load_checkpoint_file", "set_rng_state"]
