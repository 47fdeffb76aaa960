"""INPUT.*, DATASETS.*, DATALOADER.* defaults."""
from ..config import CfgNode as CN


def add_data_config(_C: CN) -> None:
    _C.INPUT = CN()
    # Shortest-edge sizes for training; one is drawn per image ("choice") or a size is
    # drawn uniformly between the two values ("range").
    _C.INPUT.MIN_SIZE_TRAIN = (800,)
    _C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    _C.INPUT.MAX_SIZE_TRAIN = 1333
    _C.INPUT.MIN_SIZE_TEST = 800  # 0 disables resizing at test time
    _C.INPUT.MAX_SIZE_TEST = 1333
    # Channel order the model sees: "RGB" or "BGR" (PIXEL_MEAN/STD follow this order).
    _C.INPUT.FORMAT = "RGB"
    # "horizontal", "vertical" or "none".
    _C.INPUT.RANDOM_FLIP = "horizontal"
    # Resize inside the model (torchvision's GeneralizedRCNNTransform behaviour: float
    # bilinear resize after normalisation) instead of in the data pipeline.
    _C.INPUT.RESIZE_IN_MODEL = False

    _C.DATASETS = CN()
    # Names of datasets registered in DatasetCatalog.
    _C.DATASETS.TRAIN = ()
    _C.DATASETS.TEST = ()

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 2
    _C.DATALOADER.ASPECT_RATIO_GROUPING = True
    # Drop training images without annotations (kept as negatives by default).
    _C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    # What to do with a bad annotation / image: "error" stops with a message, "skip" drops and counts.
    _C.DATALOADER.ON_BAD_ANNOTATION = "error"
    _C.DATALOADER.ON_BAD_IMAGE = "error"
    _C.DATALOADER.BACKEND = "torch"  # "torch" or "dali"
