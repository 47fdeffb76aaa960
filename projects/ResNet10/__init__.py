"""ResNet-10 backbone project (see README.md); the component lives in ``resnet10``."""
