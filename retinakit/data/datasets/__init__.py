"""Built-in datasets. ``shapes_*`` are registered when ``retinakit.data`` is imported and
generated on first use (see :mod:`retinakit.data.datasets.shapes`)."""
from .shapes import (
    SPECS,
    ShapesSpec,
    generate_shapes,
    register_all_shapes,
    register_shapes,
)

__all__ = ["SPECS", "ShapesSpec", "generate_shapes", "register_all_shapes", "register_shapes"]
