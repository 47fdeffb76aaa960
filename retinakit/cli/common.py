"""What the subcommands share: the config of a model file, the resolved-config file, the
equivalent ``tools/*.py`` command, one-line notices."""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from ..config import CfgNode, ConfigError, get_cfg
from .odtk import OdtkFlagError, Overrides, odtk_model

__all__ = ["checkpoint_classes", "flat", "load_file", "model_cfg", "notice", "print_equivalent", "sidecar_config", "write_config"]

PTH_EXTS = (".pth", ".pt", ".pkl", ".safetensors")


def flat(overrides: Overrides) -> list[Any]:
    """``[(KEY, VALUE), ...]`` -> ``[KEY, VALUE, ...]`` for ``CfgNode.merge_from_list``."""
    return [x for pair in overrides for x in pair]


def notice(text: str) -> None:
    """One line that tells the user what retinakit did differently from ODTK (stdout)."""
    print(f"notice: {text}", flush=True)


def sidecar_config(model: str) -> str:
    """``MODEL`` minus its extension + ``.yaml``: where ``retinakit train`` writes the resolved config."""
    return os.path.splitext(model)[0] + ".yaml"


def write_config(cfg: CfgNode, path: str) -> str:
    """Write the resolved config ``cfg`` to ``path`` (folders created); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(cfg.dump())
    return path


def print_equivalent(argv: Sequence[str]) -> None:
    """Print the ``tools/*.py`` command that does the same run (config in a file, no ODTK flags)."""
    print("equivalent: " + " ".join(shlex.quote(str(a)) for a in ["python", *argv]), flush=True)


def load_file(path: str) -> dict[str, Any]:
    """The loaded checkpoint ``path`` (``weights_only``), a one-line error when unreadable."""
    from ..checkpoint import load_checkpoint_file
    from ..export import PredictorError

    if not os.path.isfile(path):
        raise PredictorError(f"Model file '{path}' does not exist.")
    try:
        return dict(load_checkpoint_file(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one message
        raise PredictorError(f"Cannot read model '{path}': {e}") from None


def odtk_info(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The converter's info (backbone, classes, config values) when ``ckpt`` is an ODTK checkpoint, else None."""
    from ..checkpoint.converters import convert, detect_source
    from ..checkpoint.model_loading import extract_state_dict

    sd = extract_state_dict(ckpt)
    if detect_source(sd) != "odtk":
        return None
    try:
        return convert("odtk", sd, checkpoint=ckpt)[1]
    except ValueError as e:
        raise OdtkFlagError(f"ODTK checkpoint not usable: {e}.") from None


def checkpoint_classes(ckpt: dict[str, Any]) -> int | None:
    """Class count of a retinakit or ODTK checkpoint's classifier (None when it has none)."""
    from ..checkpoint.model_loading import extract_state_dict

    info = odtk_info(ckpt)
    if info is not None:
        return int(info["num_classes"])
    sd = extract_state_dict(ckpt)
    cls = next((v for k, v in sd.items() if k.endswith("cls_score.weight")), None)
    box = next((v for k, v in sd.items() if k.endswith("bbox_pred.weight")), None)
    if cls is None or box is None or box.shape[0] % 4:
        return None
    return int(cls.shape[0]) // max(1, int(box.shape[0]) // 4)


def model_cfg(model: str, config_file: str = "") -> tuple[CfgNode, str]:
    """The config of the checkpoint ``model`` and where it came from.

    ``config_file`` when given; else the resolved config ``retinakit train`` wrote beside it
    (``MODEL.yaml``); else, for an ODTK checkpoint, ODTK's architecture for its backbone with
    the class count and anchors the converter reads from it (``MODEL.WEIGHTS`` emptied: the
    file itself is loaded). A retinakit checkpoint without a config is a one-line error.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"--config-file '{config_file}' does not exist.")
        cfg.merge_from_file(config_file)
        return cfg, config_file
    side = sidecar_config(model)
    if os.path.isfile(side):
        cfg.merge_from_file(side)
        return cfg, side
    info = odtk_info(load_file(model))
    if info is None:
        raise ConfigError(
            f"'{model}' is a retinakit checkpoint without its config: put the config it was trained with beside it as "
            f"'{side}' (retinakit train writes it there), or pass --config-file CFG."
        )
    cfg.merge_from_list(flat(odtk_model(str(info["backbone"]))))
    cfg.merge_from_list([*info.get("config_overrides", []), "MODEL.WEIGHTS", ""])
    return cfg, f"ODTK checkpoint ({info['backbone']}, {info['num_classes']} classes)"
