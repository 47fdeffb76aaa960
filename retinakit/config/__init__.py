"""Configuration: ``get_cfg()``, ``CfgNode``, ``@configurable``."""
from .config import CfgNode, ConfigError, get_cfg, import_custom_modules, register_config_extension
from .configurable import configurable

__all__ = [
    "CfgNode",
    "ConfigError",
    "configurable",
    "get_cfg",
    "import_custom_modules",
    "register_config_extension",
]
