"""Evaluation: ``COCOEvaluator`` and ``inference_on_dataset``."""
from .coco_evaluation import (
    COCOEvaluator,
    dataset_dicts_to_coco,
    instances_to_coco_json,
)
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_on_dataset

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "dataset_dicts_to_coco",
    "inference_on_dataset",
    "instances_to_coco_json",
]
