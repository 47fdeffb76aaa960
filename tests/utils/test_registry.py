import pytest

from retinakit.modeling import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    BOX_CODER_REGISTRY,
    HEAD_REGISTRY,
    LOSS_REGISTRY,
    MATCHER_REGISTRY,
    META_ARCH_REGISTRY,
    POSTPROCESSOR_REGISTRY,
)
from retinakit.utils.registry import Registry


def test_register_get_and_error_lists_names():
    reg = Registry("THING")

    @reg.register()
    class Alpha:
        pass

    reg.register(lambda: 1, name="beta")
    assert reg.get("Alpha") is Alpha and "beta" in reg
    with pytest.raises(KeyError) as e:
        reg.get("Alpah")
    msg = str(e.value)
    assert "Alpah" in msg and "THING" in msg and "Alpha, beta" in msg and "Did you mean: Alpha" in msg
    with pytest.raises(KeyError, match="already registered"):
        reg.register(lambda: 2, name="beta")


@pytest.mark.parametrize("registry,expected", [
    (BACKBONE_REGISTRY, "build_retinanet_resnet_fpn_backbone"),
    (ANCHOR_GENERATOR_REGISTRY, "DefaultAnchorGenerator"),
    (BOX_CODER_REGISTRY, "DeltaXYWHBoxCoder"),
    (MATCHER_REGISTRY, "IoUMatcher"),
    (LOSS_REGISTRY, "sigmoid_focal"),
    (HEAD_REGISTRY, "RetinaNetHead"),
    (POSTPROCESSOR_REGISTRY, "RetinaNetPostProcessor"),
    (META_ARCH_REGISTRY, "RetinaNet"),
])
def test_every_registry_has_defaults_and_documents_its_signature(registry, expected):
    assert expected in registry
    assert "call" in (registry.__doc__ or "").lower() or "called as" in (registry.__doc__ or "")


def test_unregistered_name_from_config_fails_with_list():
    from retinakit.config import get_cfg
    from retinakit.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "smoth_l1", "MODEL.DEVICE", "cpu"])
    with pytest.raises(KeyError, match="smooth_l1"):
        build_model(cfg)
