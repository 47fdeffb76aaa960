"""Model-weights files: ``.safetensors`` (save and load) and weights-only ``.pth``.

A ``.safetensors`` file written here holds the **model weights only** (a state dict of
tensors): no optimizer, scheduler, iteration, hook or RNG state, so it can start a training
or an evaluation through ``MODEL.WEIGHTS`` but cannot ``--resume`` one (training checkpoints
stay ``.pth``). The ``__retinakit__`` dictionary of converted weights (source, the config
values the weights require) is kept as JSON in the file's string metadata under
``"retinakit"`` and restored when the file is loaded, so its config checks still apply.

Saving or loading ``.safetensors`` needs the ``safetensors`` package (``pip install
safetensors``); without it :class:`MissingSafetensorsError` says so in one line.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..utils.errors import UserInputError
from .checkpointer import atomic_torch_save, atomic_write_bytes

__all__ = [
    "SAFETENSORS_SUFFIX",
    "MissingSafetensorsError",
    "load_safetensors",
    "save_model_weights",
    "save_safetensors",
]

SAFETENSORS_SUFFIX = ".safetensors"
_INFO_KEY = "retinakit"


class MissingSafetensorsError(ImportError, UserInputError):
    """The ``safetensors`` package is needed for a ``.safetensors`` file but is not installed."""


def _safetensors_torch(path: str, action: str) -> ModuleType:
    """``safetensors.torch``, or :class:`MissingSafetensorsError` naming ``path`` and the fix."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise MissingSafetensorsError(
            f"{action} the safetensors file '{path}' needs the 'safetensors' package, which is not "
            "installed. Install it with: pip install safetensors"
        ) from None
    return st


def _model_state_dict(weights: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict of a module (DDP unwrapped), a checkpoint dict or a state dict."""
    from .model_loading import extract_state_dict

    if isinstance(weights, nn.Module):
        inner = getattr(weights, "module", None)
        module = inner if isinstance(inner, nn.Module) else weights
        return dict(module.state_dict())
    return extract_state_dict(weights)


def _standalone_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that share no memory (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_safetensors(weights: nn.Module | Mapping[str, Any], path: str, info: Mapping[str, Any] | None = None) -> str:
    """Write the model weights of ``weights`` to ``path`` (``.safetensors``), atomically.

    ``weights``: a model, a retinakit checkpoint dict (only its ``"model"`` entry is written)
    or a state dict. ``info``: JSON-serialisable metadata restored by :func:`load_safetensors`
    as ``"__retinakit__"`` (e.g. what ``tools/convert_weights.py`` records). Returns ``path``.
    """
    st = _safetensors_torch(path, "Writing")
    state = _model_state_dict(weights)
    if not state:
        raise ValueError(f"Nothing to write to '{path}': the given weights hold no tensors.")
    metadata = {"format": "pt"}
    if info:
        metadata[_INFO_KEY] = json.dumps(dict(info), sort_keys=True)
    data = st.save(_standalone_tensors(state), metadata=metadata)
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


def load_safetensors(path: str, source: str | None = None) -> dict[str, Any]:
    """``{"model": state_dict}`` (plus ``"__retinakit__"`` when recorded) of a ``.safetensors`` file on the CPU.

    ``source`` names the file in messages (e.g. the URL it was downloaded from).
    """
    _safetensors_torch(source or path, "Reading")
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    ckpt: dict[str, Any] = {"model": state}
    if _INFO_KEY in metadata:
        try:
            ckpt["__retinakit__"] = json.loads(metadata[_INFO_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"'{source or path}': its '{_INFO_KEY}' metadata is not valid JSON ({e}).") from None
    return ckpt


def save_model_weights(weights: nn.Module | Mapping[str, Any], path: str, info: Mapping[str, Any] | None = None) -> str:
    """Write the model weights of ``weights`` (model, checkpoint dict or state dict) to ``path``.

    The format follows the extension: ``.safetensors`` -> :func:`save_safetensors`; anything
    else -> ``torch.save({"model": state_dict[, "__retinakit__": info]})`` (loads with
    ``weights_only=True``). Both are written atomically and hold model weights only.
    Returns ``path``.
    """
    if path.endswith(SAFETENSORS_SUFFIX):
        return save_safetensors(weights, path, info)
    data: dict[str, Any] = {"model": _model_state_dict(weights)}
    if info:
        data["__retinakit__"] = dict(info)
    atomic_torch_save(data, path)
    return path
