"""Utilities: registries, distributed helpers, logging, events, visualisation."""
from .registry import Registry

__all__ = ["Registry"]
