"""A small name -> object registry with helpful error messages.

Every component type of retinakit has exactly one registry. A registry maps a
name (the string used in YAML) to a class or a factory function. Each registry
documents, in its own docstring, the call signature its entries must follow.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry:
    """Maps names to objects.

    Use it as a decorator::

        @BACKBONE_REGISTRY.register()
        class MyBackbone(Backbone): ...

    or as a call: ``BACKBONE_REGISTRY.register(MyBackbone)``.
    ``get(name)`` fails with a ``KeyError`` that lists every registered name.
    """

    def __init__(self, name: str, doc: str = "") -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}
        self.__doc__ = doc

    @property
    def name(self) -> str:
        return self._name

    def _do_register(self, name: str, obj: Any, override: bool) -> None:
        if name in self._obj_map and self._obj_map[name] is not obj and not override:
            raise KeyError(
                f"An object named '{name}' is already registered in the {self._name} registry "
                f"({self._obj_map[name]!r}). Choose another name, or pass override=True."
            )
        self._obj_map[name] = obj

    def register(
        self, obj: T | None = None, *, name: str | None = None, override: bool = False
    ) -> Any:
        """Register ``obj`` under ``name`` (default: ``obj.__name__``)."""
        if obj is None:

            def deco(func_or_class: T) -> T:
                self._do_register(name or getattr(func_or_class, "__name__"), func_or_class, override)  # noqa: B009 - T has no __name__ for mypy
                return func_or_class

            return deco
        self._do_register(name or getattr(obj, "__name__"), obj, override)  # noqa: B009 - T has no __name__ for mypy
        return obj

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; a clear ``KeyError`` otherwise."""
        if name not in self._obj_map:
            known = sorted(self._obj_map)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(
                f"No object named '{name}' in the {self._name} registry.{hint} "
                f"Registered names: {', '.join(known) or '(none)'}. "
                "If it comes from your own package, list that package in CUSTOM_IMPORTS."
            )
        return self._obj_map[name]

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(sorted(self._obj_map.items()))

    def names(self) -> list:
        return sorted(self._obj_map)

    def __repr__(self) -> str:
        return f"Registry(name={self._name!r}, names={self.names()})"


def locate(name: str) -> Callable[..., Any]:
    """Import ``package.module.attr`` given as a dotted string."""
    import importlib

    module_name, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)
