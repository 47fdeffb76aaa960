"""``DatasetCatalog`` (name -> function returning dataset dicts) and ``MetadataCatalog``."""
from __future__ import annotations

import builtins
import difflib
import threading
from collections.abc import Callable
from typing import Any

from ..utils.errors import RegistryKeyError

__all__ = ["DatasetCatalog", "Metadata", "MetadataCatalog"]


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"Dataset '{name}' is not registered in {kind}.{hint} Registered: {', '.join(sorted(known)) or '(none)'}. "
        "Register it with retinakit.data.register_coco_instances(name, {}, json_file, image_root), "
        "or give DATASETS.TRAIN_JSON/TRAIN_IMAGES (TEST_JSON/TEST_IMAGES) in the config."
    )


class _DatasetCatalog:
    """Maps a dataset name to a function ``() -> list[dict]`` (detectron2-style dataset dicts)."""

    def __init__(self) -> None:
        self._funcs: dict[str, Callable[[], list[dict]]] = {}

    def register(self, name: str, func: Callable[[], builtins.list[dict]], override: bool = False) -> None:
        """Register ``func`` under ``name``; a second registration fails unless ``override``."""
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', func): func must be callable, got {type(func).__name__}.")
        if name in self._funcs and not override:
            raise RegistryKeyError(f"Dataset '{name}' is already registered. Use another name or DatasetCatalog.remove('{name}') first.")
        self._funcs[name] = func

    def get(self, name: str) -> builtins.list[dict]:
        """Call the function registered as ``name`` and return its dataset dicts."""
        if name not in self._funcs:
            raise RegistryKeyError(_unknown("DatasetCatalog", name, list(self._funcs)))
        return self._funcs[name]()

    def get_function(self, name: str) -> Callable[..., builtins.list[dict]]:
        """The function registered as ``name`` (not called)."""
        if name not in self._funcs:
            raise RegistryKeyError(_unknown("DatasetCatalog", name, list(self._funcs)))
        return self._funcs[name]

    def list(self) -> builtins.list[str]:
        return sorted(self._funcs)

    def remove(self, name: str) -> None:
        self._funcs.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._funcs


class Metadata:
    """Attributes of a dataset (``thing_classes``, ``json_file``, ...).

    Attributes may be filled lazily: ``set_lazy(fn, names)`` calls ``fn(self)`` the first
    time one of ``names`` is read (e.g. the category list of a COCO JSON file is read
    only when ``thing_classes`` is first asked for). Setting an attribute to a value
    different from the one it already has is an error (it hides a mix-up of datasets).
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_lazy", {})
        object.__setattr__(self, "_lock", threading.Lock())

    def set_lazy(self, fn: Callable[[Metadata], None], names: list[str]) -> Metadata:
        for n in names:
            self._lazy[n] = fn
        return self

    def __getattr__(self, key: str) -> Any:
        lazy = self.__dict__.get("_lazy", {})
        if key in lazy:
            with self._lock:
                fn = lazy.get(key)
                if fn is not None:
                    for k in [k for k, f in lazy.items() if f is fn]:
                        lazy.pop(k)
                    fn(self)
            if key in self.__dict__:
                return self.__dict__[key]
        raise AttributeError(
            f"Metadata of dataset '{self.__dict__.get('name')}' has no attribute '{key}'. "
            f"Available: {sorted(k for k in self.__dict__ if not k.startswith('_'))}."
        )

    def __setattr__(self, key: str, value: Any) -> None:
        old = self.__dict__.get(key, None)
        if key in self.__dict__ and old != value:
            raise AttributeError(
                f"Metadata '{key}' of dataset '{self.name}' is already {old!r}; refusing to change it to {value!r}. "
                f"Use MetadataCatalog.remove('{self.name}') to start over."
            )
        self._lazy.pop(key, None)
        object.__setattr__(self, key, value)

    def set(self, **kwargs: Any) -> Metadata:
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any | None = None) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def as_dict(self) -> dict[str, Any]:
        for key in list(self._lazy):
            getattr(self, key, None)
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        keys = sorted(k for k in self.__dict__ if not k.startswith("_")) + sorted(self._lazy)
        return f"Metadata(name={self.name!r}, keys={keys})"


class _MetadataCatalog:
    """Maps a dataset name to its :class:`Metadata` (created on first ``get``)."""

    def __init__(self) -> None:
        self._meta: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._meta:
            self._meta[name] = Metadata(name)
        return self._meta[name]

    def list(self) -> builtins.list[str]:
        return sorted(self._meta)

    def remove(self, name: str) -> None:
        self._meta.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._meta


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
