"""Distance-IoU box regression loss project (see README.md); the component lives in ``diou_loss``."""
