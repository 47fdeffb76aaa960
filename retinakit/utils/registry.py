"""A small name -> object registry with helpful error messages.

Every component type of retinakit has exactly one registry. A registry maps a
name (the string used in YAML) to a class or a factory function. Each registry
documents, in its own docstring, the call signature its entries must follow; a registry
created with a ``protocol`` (a ``typing.Protocol`` class) also checks, when an entry is
built (:meth:`Registry.build`, :meth:`Registry.check_protocol`), that the built object has
every method of that Protocol, and names the missing ones otherwise.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

from .errors import RegistryKeyError

T = TypeVar("T")

__all__ = ["Registry", "protocol_methods"]


def protocol_methods(protocol: type) -> dict[str, Callable[..., Any]]:
    """The methods a ``typing.Protocol`` class declares (its own and inherited Protocols'),
    by name; ``__call__`` included, other dunders not."""
    methods: dict[str, Callable[..., Any]] = {}
    for klass in reversed(protocol.__mro__):
        if not getattr(klass, "_is_protocol", False) or klass.__module__ == "typing":
            continue
        for name, value in vars(klass).items():
            if callable(value) and (name == "__call__" or not name.startswith("_")):
                methods[name] = value
    return methods


def _describe(name: str, fn: Callable[..., Any]) -> str:
    """``name(arg, ...)`` without ``self`` and annotations, for error messages."""
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    return f"{name}({', '.join(params)})"


class Registry:
    """Maps names to objects.

    Use it as a decorator::

        @BACKBONE_REGISTRY.register()
        class MyBackbone(Backbone): ...

    or as a call: ``BACKBONE_REGISTRY.register(MyBackbone)``.
    ``get(name)`` fails with a ``KeyError`` that lists every registered name.
    """

    def __init__(self, name: str, doc: str = "", protocol: type | None = None) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}
        self.protocol = protocol
        self.__doc__ = doc

    @property
    def name(self) -> str:
        return self._name

    def _do_register(self, name: str, obj: Any, override: bool) -> None:
        if name in self._obj_map and self._obj_map[name] is not obj and not override:
            raise RegistryKeyError(
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
            raise RegistryKeyError(
                f"No object named '{name}' in the {self._name} registry.{hint} "
                f"Registered names: {', '.join(known) or '(none)'}. "
                "If it comes from your own package, list that package in CUSTOM_IMPORTS."
            )
        return self._obj_map[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)``, checked against the registry's protocol."""
        return self.check_protocol(self.get(name)(*args, **kwargs), name)

    def check_protocol(self, obj: T, name: str | None = None) -> T:
        """Return ``obj`` if it has every method of the registry's protocol (always, without one).

        Raises ``TypeError`` naming the entry, the protocol and each missing method.
        """
        if self.protocol is None:
            return obj
        required = protocol_methods(self.protocol)
        missing = [m for m in required if not callable(obj if m == "__call__" else getattr(obj, m, None))]
        if missing:
            label = f"entry '{name}'" if name else "component"
            needed = "; ".join(_describe(m, required[m]) for m in required)
            raise TypeError(
                f"The {self._name} {label} ({type(obj).__qualname__}) does not meet the {self.protocol.__name__} protocol: "
                f"missing method(s) {', '.join(missing)}. It must provide: {needed} (see help({self._name}_REGISTRY))."
            )
        return obj

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
