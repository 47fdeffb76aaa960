"""retinakit's default config, assembled from one file per concern.

Every key is documented where it is defined and listed in docs/configs.md.
Key names follow detectron2 where it has one.
"""
from ..config import CfgNode as CN
from .data import add_data_config
from .export import add_export_config
from .model import add_model_config
from .solver import add_solver_config

_C = CN()
_C.VERSION = 1  # config format version
# Python modules imported before anything is built, so that components they register
# (backbones, losses, hooks, ...) can be named in the config. E.g. ["projects.ResNet10.resnet10"].
_C.CUSTOM_IMPORTS = []
# Directory for checkpoints, metrics.json, TensorBoard events, log.txt and the config dump.
_C.OUTPUT_DIR = "./output"
# Random seed; a negative value draws one from the OS (it is logged and saved in the config dump).
_C.SEED = -1
# torch.backends.cudnn.benchmark (set by default_setup, never at import).
_C.CUDNN_BENCHMARK = False

add_model_config(_C)
add_data_config(_C)
add_solver_config(_C)
add_export_config(_C)

__all__ = ["_C"]
