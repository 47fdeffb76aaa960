"""INPUT.*, DATASETS.*, DATALOADER.* defaults (the data layer: retinakit/data, docs/datasets.md)."""
from ..config import CfgNode as CN


def add_data_config(_C: CN) -> None:
    _C.INPUT = CN()
    # Shortest-edge sizes for training; one is drawn per image ("choice") or a size is
    # drawn uniformly between the two values ("range").
    _C.INPUT.MIN_SIZE_TRAIN = (800,)
    # "choice" (one of MIN_SIZE_TRAIN per image) or "range" (integer in [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]]).
    _C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    # Longest edge cap for training images (after the shortest-edge resize).
    _C.INPUT.MAX_SIZE_TRAIN = 1333
    _C.INPUT.MIN_SIZE_TEST = 800  # 0 disables resizing at test time
    # Longest edge cap at test time (also used by deployment calibration, same preprocessing).
    _C.INPUT.MAX_SIZE_TEST = 1333
    # Channel order the model sees: "RGB" or "BGR" (PIXEL_MEAN/STD follow this order).
    _C.INPUT.FORMAT = "RGB"
    # "horizontal", "vertical" or "none".
    _C.INPUT.RANDOM_FLIP = "horizontal"
    # Probability of the flip chosen by RANDOM_FLIP (training only).
    _C.INPUT.FLIP_PROB = 0.5
    # Resize inside the model (torchvision's GeneralizedRCNNTransform behaviour: float
    # bilinear resize after normalisation) instead of in the data pipeline.
    _C.INPUT.RESIZE_IN_MODEL = False
    # Optional photometric distortion at training time (torchvision.transforms.v2.ColorJitter).
    _C.INPUT.PHOTOMETRIC = CN()
    # Turn the colour jitter on.
    _C.INPUT.PHOTOMETRIC.ENABLED = False
    # Brightness factor drawn in [1 - B, 1 + B].
    _C.INPUT.PHOTOMETRIC.BRIGHTNESS = 0.2
    # Contrast factor drawn in [1 - C, 1 + C].
    _C.INPUT.PHOTOMETRIC.CONTRAST = 0.2
    # Saturation factor drawn in [1 - S, 1 + S].
    _C.INPUT.PHOTOMETRIC.SATURATION = 0.2
    # Hue shift drawn in [-H, H] (at most 0.5).
    _C.INPUT.PHOTOMETRIC.HUE = 0.02

    _C.DATASETS = CN()
    # Names of datasets registered in DatasetCatalog, used for training (concatenated).
    _C.DATASETS.TRAIN = ()
    # Names of registered datasets to evaluate on (each evaluated separately).
    _C.DATASETS.TEST = ()
    # A COCO JSON + image folder given directly in the config (no Python needed). When set,
    # the dataset is registered as "cfg_train" and used for training in addition to DATASETS.TRAIN.
    _C.DATASETS.TRAIN_JSON = ""
    # Image folder that the file_name entries of TRAIN_JSON are relative to.
    _C.DATASETS.TRAIN_IMAGES = ""
    # Same for evaluation: registered as "cfg_test" and evaluated after DATASETS.TEST.
    _C.DATASETS.TEST_JSON = ""
    # Image folder of TEST_JSON.
    _C.DATASETS.TEST_IMAGES = ""
    # Read every image header when a dataset is loaded: missing/unreadable files and sizes
    # that disagree with the JSON are caught before training starts (not only when decoded).
    _C.DATASETS.CHECK_IMAGE_FILES = True
    # Keep the validated dataset dicts of each COCO JSON in a cache file, so that a later run
    # (same JSON, image folder and validation options) skips parsing and probing; a changed
    # JSON or image file makes the entry stale. With DDP, rank 0 loads and the others receive.
    _C.DATASETS.CACHE = True
    # Folder of that cache; "" is $RETINAKIT_CACHE_DIR, else ~/.cache/retinakit/datasets.
    _C.DATASETS.CACHE_DIR = ""

    _C.DATALOADER = CN()
    # Worker processes per data loader (0: load in the main process).
    _C.DATALOADER.NUM_WORKERS = 2
    # Batch images of the same orientation (landscape/portrait) together (less padding).
    _C.DATALOADER.ASPECT_RATIO_GROUPING = True
    # Drop training images without annotations (kept as negatives by default).
    _C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    # What to do with a bad annotation / image: "error" stops with a message, "skip" drops and counts.
    _C.DATALOADER.ON_BAD_ANNOTATION = "error"
    # Same for images (missing, unreadable, truncated, corrupt, size disagreeing with the JSON).
    _C.DATALOADER.ON_BAD_IMAGE = "error"
    _C.DATALOADER.BACKEND = "torch"  # "torch" or "dali"
    # NVIDIA DALI backend settings (pip install retinakit[dali]).
    _C.DATALOADER.DALI = CN()
    # "auto" (GPU decode/resize when a GPU is visible, else CPU), "cpu" or "gpu".
    _C.DATALOADER.DALI.DEVICE = "auto"
    # DALI worker threads per pipeline.
    _C.DATALOADER.DALI.NUM_THREADS = 2
    # Batches DALI prepares ahead.
    _C.DATALOADER.DALI.PREFETCH_QUEUE_DEPTH = 2
