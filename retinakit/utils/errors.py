"""One error type for mistakes in what the user gave: config, data, files, arguments.

Every error a user can fix by changing their input derives from :class:`UserInputError` (the
config's ``ConfigError``, the data layer's ``DatasetError``, the checkpoint and export errors,
an unknown registry name ...), so the command-line tools report all of them the same way:
:func:`user_error_message` gives the one line to print, and the tool exits with
:data:`EXIT_USER_ERROR`, without a traceback. Each subclass also keeps its natural built-in
base (``ValueError``, ``OSError``, ``ImportError``, ``KeyError``), so existing ``except``
clauses still catch it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_USER_ERROR", "RegistryKeyError", "UserInputError", "exit_code_on_user_error", "user_error_message"]

EXIT_USER_ERROR = 2


class UserInputError(Exception):
    """A mistake in the user's input; the message names the key/file/id and the fix."""


class RegistryKeyError(KeyError, UserInputError):
    """A name that is not in a registry (or is registered twice); ``args[0]`` is the message."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def user_error_message(e: BaseException) -> str | None:
    """The one-line message to print for a user error, else ``None`` (a bug: let it raise).

    User errors are :class:`UserInputError` s, plus ``FileNotFoundError`` (a path the user gave).
    """
    if isinstance(e, UserInputError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"File not found: {e.filename or e}"
    return None


def exit_code_on_user_error(fn: Callable[..., int], *args: Any, prefix: str = "error") -> int:
    """A tool's ``fn(*args)``: a user error prints ``<prefix>: <message>`` (one line, stderr) and
    returns :data:`EXIT_USER_ERROR`; any other exception propagates with its traceback."""
    try:
        return fn(*args)
    except Exception as e:
        msg = user_error_message(e)
        if msg is None:
            raise
        print(f"{prefix}: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
