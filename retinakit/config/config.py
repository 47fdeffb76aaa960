"""``CfgNode``: fvcore's config node with safe YAML, ``_BASE_``, checked keys and types."""
from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterable
from typing import Any, Callable

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from ..utils.errors import UserInputError

__all__ = ["CfgNode", "ConfigError", "get_cfg", "register_config_extension"]

logger = logging.getLogger(__name__)

# Functions ``fn(cfg)`` that add config keys for components living outside the library
# (projects/, user packages). They run on every new config and, after CUSTOM_IMPORTS
# are imported, on a config being merged.
_CONFIG_EXTENSIONS: list[Callable[[CfgNode], None]] = []


class ConfigError(ValueError, UserInputError):
    """A config file or override is invalid. The message names the key and the source."""


def register_config_extension(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Register ``fn(cfg)`` that adds new keys (e.g. ``cfg.MODEL.RESNET10 = CfgNode()``).

    ``fn`` must only add keys that are missing, so that it can run more than once.
    Use it as a decorator in the module named in ``CUSTOM_IMPORTS``.
    """
    if fn not in _CONFIG_EXTENSIONS:
        _CONFIG_EXTENSIONS.append(fn)
    return fn


def _apply_extensions(cfg: CfgNode) -> None:
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for fn in _CONFIG_EXTENSIONS:
        fn(cfg)
    if was_frozen:
        cfg.freeze()


def import_custom_modules(modules: Iterable[str]) -> None:
    """Import each module named in ``CUSTOM_IMPORTS`` (registers user components)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"CUSTOM_IMPORTS names the module '{name}', which cannot be imported: {e}. "
                "Make sure its folder is on PYTHONPATH (or installed) and the name is spelled right."
            ) from e


def _all_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, dict):
            out.extend(_all_keys(v, full + "."))
    return out


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default``; ConfigError if impossible."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif isinstance(default, (int, float)) and isinstance(value, type(default)):
        return value
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, dict) and isinstance(value, dict):
        return value
    if type(value) is type(default):
        return value
    raise ConfigError(
        f"Config key {key} (from {source}) expects a {type(default).__name__} like "
        f"{default!r}, but got {type(value).__name__} {value!r}."
    )


class CfgNode(_FvCfgNode):
    """A config node. Differences from fvcore's:

    * YAML is always read with ``yaml.safe_load`` (no Python tags, no ``eval``).
    * ``CUSTOM_IMPORTS`` found in a file are imported before its keys are checked, so
      user packages can add config keys with :func:`register_config_extension`.
    * An unknown key fails with the closest valid keys; a value of the wrong type
      fails naming the key, the expected type and the source. ``int`` is accepted
      where a ``float`` is expected.
    """

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if allow_unsafe:
            raise ConfigError("retinakit reads YAML with safe_load only; allow_unsafe is not supported.")
        try:
            loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=False)
        except FileNotFoundError as e:
            raise ConfigError(f"Config file not found: {cfg_filename} ({e}).") from e
        except yaml.YAMLError as e:
            raise ConfigError(
                f"Cannot parse config file {cfg_filename}: {e}. retinakit reads YAML with "
                "safe_load: Python tags and eval expressions are not allowed; write plain lists/numbers."
            ) from e
        if loaded is None:
            return
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {cfg_filename} must contain a mapping of keys, got {type(loaded).__name__}.")
        self.merge_from_dict(loaded, source=cfg_filename)

    def merge_from_dict(self, loaded: dict[str, Any], source: str = "a dict") -> None:
        """Merge a plain nested dict, checking keys and types."""
        imports = loaded.get("CUSTOM_IMPORTS")
        if imports:
            import_custom_modules(imports)
            _apply_extensions(self)
        checked = self._check(loaded, self, "", source)
        self.merge_from_other_cfg(type(self)(checked))

    def _check(self, loaded: dict[str, Any], node: Any, prefix: str, source: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in loaded.items():
            full = f"{prefix}{key}"
            if key not in node:
                raise ConfigError(self._unknown_key_message(full, source))
            default = node[key]
            if isinstance(default, dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"Config key {full} (from {source}) is a group of keys; got {value!r}.")
                out[key] = self._check(value, default, full + ".", source)
            else:
                if isinstance(value, str) and not isinstance(default, str):
                    value = self._decode_cfg_value(value)  # "(800,)" in YAML -> tuple, as yacs does
                out[key] = _coerce(value, default, full, source)
        return out

    def _unknown_key_message(self, full: str, source: str) -> str:
        keys = _all_keys(self)
        close = difflib.get_close_matches(full, keys, n=3, cutoff=0.5)
        leaf = full.rsplit(".", 1)[-1]
        close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close][:2]
        hint = f" Closest valid keys: {', '.join(close)}." if close else ""
        return (
            f"Unknown config key '{full}' (from {source}).{hint} "
            "See docs/configs.md for every key; keys of a custom component need its package in CUSTOM_IMPORTS."
        )

    def merge_from_list(self, cfg_list: list[Any]) -> None:
        """Merge ``["KEY.PATH", "VALUE", ...]`` (values parsed as Python literals, else strings)."""
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"Overrides must come in KEY VALUE pairs; got an odd number of items: {cfg_list}."
            )
        nested: dict[str, Any] = {}
        for full, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            value = self._decode_cfg_value(raw) if isinstance(raw, str) else raw
            if full == "CUSTOM_IMPORTS" and value:
                import_custom_modules(value)
                _apply_extensions(self)
            d = nested
            parts = full.split(".")
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            d[parts[-1]] = value
        checked = self._check(nested, self, "", "the command line")
        self.merge_from_other_cfg(type(self)(checked))


def get_cfg() -> CfgNode:
    """A fresh copy of retinakit's default config (documented in docs/configs.md)."""
    from .defaults import _C

    cfg = _C.clone()
    _apply_extensions(cfg)
    return cfg
