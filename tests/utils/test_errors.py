"""Every user-input error is a ``UserInputError`` (one type the tools print as one line), and
keeps its built-in base so existing ``except ValueError/OSError/KeyError`` clauses still work."""
from __future__ import annotations

import errno

import pytest

from retinakit.utils.errors import RegistryKeyError, UserInputError, user_error_message


def _user_error_types() -> dict:
    from retinakit.checkpoint import CheckpointMismatchError, CheckpointWriteError
    from retinakit.checkpoint.weights_file import MissingSafetensorsError
    from retinakit.config import ConfigError
    from retinakit.data.errors import BadImageError, DatasetError
    from retinakit.export import CacheError, CalibrationError, MissingDependencyError, PredictorError
    from retinakit.export.tensorrt import TensorRTLimitError

    return {
        ConfigError: ValueError, DatasetError: ValueError, BadImageError: ValueError, CheckpointMismatchError: ValueError,
        CheckpointWriteError: OSError, MissingSafetensorsError: ImportError, MissingDependencyError: ImportError,
        PredictorError: ValueError, CalibrationError: ValueError, CacheError: ValueError, TensorRTLimitError: ValueError,
        RegistryKeyError: KeyError,
    }


def test_every_user_error_type_is_a_user_input_error_and_keeps_its_builtin_base():
    for cls, base in _user_error_types().items():
        assert issubclass(cls, UserInputError) and issubclass(cls, base), cls.__name__
        e = cls("MODEL.X is wrong: set it to 1.")
        assert user_error_message(e) == "MODEL.X is wrong: set it to 1."


def test_oserror_subclass_keeps_errno_and_message():
    from retinakit.checkpoint import CheckpointWriteError

    e = CheckpointWriteError(errno.ENOSPC, "no space left in /out")
    assert e.errno == errno.ENOSPC and user_error_message(e) == "[Errno 28] no space left in /out"


def test_unknown_registry_name_is_a_key_error_with_an_unquoted_message():
    from retinakit.modeling import BACKBONE_REGISTRY

    with pytest.raises(KeyError) as info:
        BACKBONE_REGISTRY.get("NoSuchBackbone")
    msg = user_error_message(info.value)
    assert msg is not None and msg.startswith("No object named 'NoSuchBackbone' in the BACKBONE registry")


@pytest.mark.parametrize(
    "key,value",
    [("MODEL.POSTPROCESSOR.NMS_TYPE", "fancy"), ("MODEL.ANCHOR_GENERATOR.OFFSET", "1.5"),
     ("MODEL.RETINANET.IOU_THRESHOLDS", "[0.5, 0.4]"), ("MODEL.FPN.FUSE_TYPE", "max"), ("MODEL.RESNETS.DEPTH", "19")],
)
def test_config_values_checked_by_builders_are_config_errors(key, value):
    """Values the model builders reject are ConfigErrors naming their key."""
    from retinakit.config import ConfigError, get_cfg
    from retinakit.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18"])
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(cfg)


def test_bugs_are_not_user_errors():
    assert user_error_message(ValueError("internal")) is None
    assert user_error_message(KeyError("x")) is None
    assert user_error_message(RuntimeError("x")) is None
