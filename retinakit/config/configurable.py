"""``@configurable``: build a component from a config *or* from keyword arguments."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from yacs.config import CfgNode as _YacsCfgNode

__all__ = ["configurable"]


def _is_cfg(obj: Any) -> bool:
    return isinstance(obj, _YacsCfgNode)


def _called_with_cfg(*args: Any, **kwargs: Any) -> bool:
    if args and _is_cfg(args[0]):
        return True
    return _is_cfg(kwargs.get("cfg"))


def _from_config_kwargs(from_config: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call ``from_config`` with the arguments it declares; pass the others through."""
    sig = inspect.signature(from_config)
    params = sig.parameters
    if "cfg" not in params:
        raise TypeError(f"{from_config.__qualname__} must take 'cfg' as its first argument.")
    takes_var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if takes_var_kw:
        return from_config(*args, **kwargs)
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
    built = from_config(*args, **kwargs)
    built.update(extra)  # keyword arguments given explicitly override the config
    return built


def configurable(init_func: Callable[..., Any] | None = None, *, from_config: Callable[..., Any] | None = None) -> Any:
    """Decorate a class ``__init__`` (with a ``from_config`` classmethod) or a function.

    Class usage::

        class Head(nn.Module):
            @configurable
            def __init__(self, *, in_channels: int, num_classes: int): ...

            @classmethod
            def from_config(cls, cfg, input_shape):
                return {"in_channels": ..., "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES}

        Head(cfg, input_shape)                    # from a config
        Head(in_channels=256, num_classes=3)      # from keyword arguments

    Function usage: ``@configurable(from_config=lambda cfg: {...})``.
    """
    if init_func is not None:
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
            raise TypeError("@configurable without arguments decorates a class __init__.")

        @functools.wraps(init_func)
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
            if _called_with_cfg(*args, **kwargs):
                from_cfg = getattr(type(self), "from_config", None)
                if from_cfg is None:
                    raise AttributeError(f"{type(self).__name__} needs a 'from_config' classmethod to be built from a config.")
                init_func(self, **_from_config_kwargs(from_cfg, *args, **kwargs))
            else:
                init_func(self, *args, **kwargs)

        return wrapped

    if from_config is None:
        return configurable  # used as @configurable()

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if _called_with_cfg(*args, **kwargs):
                return func(**_from_config_kwargs(from_config, *args, **kwargs))
            return func(*args, **kwargs)

        wrapped.from_config = from_config  # type: ignore[attr-defined]
        return wrapped

    return deco
