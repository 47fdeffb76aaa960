"""Data layer: dataset catalogs, COCO loading with validation, transforms, mappers, loaders.

Importing it registers the built-in ``shapes_*`` datasets (generated only when requested).
"""
from .build import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    get_eval_dataset_names,
    get_train_dataset_names,
    register_datasets_from_cfg,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json, register_coco_instances
from .collate import batch_images
from .datasets import register_all_builtin
from .errors import BadImageError, DatasetError
from .image_io import read_image
from .mapper import DatasetMapper
from .transforms import InferencePreprocessor, build_inference_preprocess

__all__ = [
    "BadImageError",
    "DatasetCatalog",
    "DatasetError",
    "DatasetMapper",
    "InferencePreprocessor",
    "Metadata",
    "MetadataCatalog",
    "batch_images",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "build_inference_preprocess",
    "get_detection_dataset_dicts",
    "get_eval_dataset_names",
    "get_train_dataset_names",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
    "register_datasets_from_cfg",
]

register_all_builtin()
