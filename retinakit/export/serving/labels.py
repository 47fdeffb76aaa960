"""The labels file that Triton (``label_filename``) and DeepStream (``labelfile-path``) read."""
from __future__ import annotations

from collections.abc import Sequence

from ...config import ConfigError

__all__ = ["class_labels", "write_labels"]


def class_labels(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """One label per class index: the dataset's class names, or ``class_0 ...`` when it has none."""
    if not class_names:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ConfigError(
            f"The dataset has {len(names)} class names but MODEL.RETINANET.NUM_CLASSES is {num_classes}: "
            "fix the config or the dataset's categories."
        )
    bad = [n for n in names if not n.strip() or "\n" in n or ";" in n]
    if bad:
        raise ConfigError(f"Class names {bad[:3]} cannot go in a labels file (empty, or with a newline or ';').")
    return names


def write_labels(path: str, class_names: Sequence[str] | None, num_classes: int) -> str:
    """Write one label per line (class index order) to ``path``; returns ``path``."""
    with open(path, "w") as f:
        f.writelines(f"{n}\n" for n in class_labels(class_names, num_classes))
    return path
