"""Built-in datasets, registered when ``retinakit.data`` is imported; nothing is read or
generated until a dataset is requested. ``shapes_*``: synthetic, generated on first use
(:mod:`.shapes`); ``coco_2017_*``: COCO files under ``$RETINAKIT_DATASETS`` (:mod:`.coco`)."""
from .coco import register_all_coco
from .shapes import (
    SPECS,
    ShapesSpec,
    generate_shapes,
    register_all_shapes,
    register_shapes,
)

__all__ = ["SPECS", "ShapesSpec", "generate_shapes", "register_all_builtin", "register_all_coco", "register_all_shapes", "register_shapes"]


def register_all_builtin() -> None:
    register_all_shapes()
    register_all_coco()
