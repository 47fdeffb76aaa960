"""tools/deploy.py: bad inputs give one clear message (exit code 2), never a traceback."""
from __future__ import annotations

import pytest
from test_deploy_helpers import (
    R18,
    R50,
    assert_clean_error,
    random_checkpoint,
    run_tool,
)

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pth"))


def test_missing_weights_file(tmp_path):
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o")])
    assert_clean_error(r, "nope.pth", "does not exist")


def test_wrong_config_for_the_weights(ckpt, tmp_path):
    r = run_tool(["tools/deploy.py", "--config-file", R50, "--weights", ckpt, "--output", str(tmp_path / "o")])
    assert_clean_error(r, "do not fit this model", "config")


def test_empty_calibration_folder(ckpt, tmp_path):
    cal = tmp_path / "cal"
    cal.mkdir()
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"),
                  "--int8", "--calibration-images", str(cal)])
    assert_clean_error(r, "No images found", str(cal))


def test_calibration_folder_of_non_image_files(ckpt, tmp_path):
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "labels.csv").write_text("a,b\n")
    (cal / "photo.jpg").write_bytes(b"this is not a jpeg")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"),
                  "--int8", "--calibration-images", str(cal)])
    assert_clean_error(r, "photo.jpg")


def test_int8_without_images_or_cache_and_verify_without_data(ckpt, tmp_path):
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"), "--int8"])
    assert_clean_error(r, "--calibration-images")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"), "--verify"])
    assert_clean_error(r, "--val-images")


def test_int8_exclude_pattern_matching_nothing(ckpt, tmp_path):
    from retinakit.data import MetadataCatalog

    pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")
    cal = MetadataCatalog.get("shapes_val").image_root
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"), "--int8",
                  "--calibration-images", cal, "--num-calibration-images", "2", "EXPORT.INT8.EXCLUDE", "['no_such_module_xyz']"])
    assert_clean_error(r, "EXPORT.INT8.EXCLUDE", "no_such_module_xyz")
