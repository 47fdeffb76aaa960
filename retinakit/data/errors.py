"""Errors raised for bad dataset content, and the counter used by the "skip" policies."""
from __future__ import annotations

import logging
from collections import Counter

from ..config.config import ConfigError
from ..utils.errors import UserInputError

__all__ = ["BadImageError", "DatasetError", "ProblemLog", "check_policy"]

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip")


class DatasetError(ValueError, UserInputError):
    """A dataset file (COCO JSON) or one of its entries is invalid.

    The message names the file, the image id / annotation id, what is wrong and what to do.
    """


class BadImageError(DatasetError):
    """An image file is missing, unreadable, truncated or disagrees with its JSON entry.

    ``kind`` names the class of problem in the "skip" summaries ("missing image file",
    "truncated or corrupt image file", ...); it is not kept when the error is pickled.
    """

    def __init__(self, message: str = "", kind: str = "bad image file") -> None:
        super().__init__(message)
        self.kind = kind


def check_policy(value: str, key: str) -> str:
    """Validate an ``ON_BAD_*`` policy value; ``key`` is the config key named in the error."""
    if value not in POLICIES:
        raise ConfigError(f"{key} must be one of {POLICIES}, got {value!r}.")
    return value


class ProblemLog:
    """Collects problems under a policy: ``error`` raises the first one, ``skip`` counts them.

    ``report(kind, message)`` raises ``error_cls(message + hint)`` with policy "error";
    with "skip" it records it. ``summary()`` logs one warning line with the count per
    kind and a few examples, and returns it (``None`` if nothing was dropped).
    """

    def __init__(self, policy: str, what: str, key: str, error_cls: type = DatasetError, examples: int = 3) -> None:
        self.policy = check_policy(policy, key)
        self.what = what
        self.key = key
        self.error_cls = error_cls
        self.counts: Counter = Counter()
        self.examples: list[str] = []
        self._max_examples = examples

    def report(self, kind: str, message: str) -> None:
        if self.policy == "error":
            raise self.error_cls(f"{message} (To drop such {self.what} and go on, set {self.key} skip.)")
        self.counts[kind] += 1
        if len(self.examples) < self._max_examples:
            self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, source: str, extra: str = "") -> str | None:
        """Log and return the one-line summary (``extra`` follows the counts)."""
        if not self.total:
            return None
        kinds = ", ".join(f"{k}: {n}" for k, n in self.counts.most_common())
        line = (
            f"{source}: skipped {self.total} {self.what} ({kinds}){extra} because {self.key} is 'skip'. "
            f"Examples: {' | '.join(self.examples)}"
        )
        logger.warning(line)
        return line
