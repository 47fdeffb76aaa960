"""tools/deploy.py: INT8 flag/key combinations that cannot work get one message (exit 2) before
the export, never a traceback (issue 16). Table-driven; each case fails before the model loads."""
from __future__ import annotations

import pytest
from test_deploy_helpers import R18, assert_clean_error, run_tool

pytest.importorskip("onnx")

CASES = [
    # (extra arguments, words the message must contain)
    (["--calibration-method", "max"], ["--calibration-method", "--int8"]),
    (["--num-calibration-images", "8"], ["--num-calibration-images", "--int8"]),
    (["--int8", "--calibration-images", "{cal}", "--num-calibration-images", "-1"], ["--num-calibration-images", ">= 0"]),
    (["--int8", "--calibration-images", "{cal}", "--max-ap-drop", "1.5"], ["--max-ap-drop", "[0, 1)"]),
    (["--int8", "--calibration-images", "{cal}", "EXPORT.INT8.CALIBRATION_METHOD", "minmax"],
     ["EXPORT.INT8.CALIBRATION_METHOD", "minmax"]),
    (["--int8", "--calibration-images", "{cal}", "--calibration-method", "percentile", "EXPORT.INT8.PERCENTILE", "0.0"],
     ["EXPORT.INT8.PERCENTILE", "(0, 100]"]),
    (["--int8", "--calibration-images", "{cal}", "EXPORT.INT8.SENSITIVITY.MAX_LAYERS", "-1"],
     ["EXPORT.INT8.SENSITIVITY.MAX_LAYERS"]),
    (["--int8", "--calibration-cache", "{cache}", "EXPORT.INT8.ORT_CPU_MODEL", "True"],
     ["EXPORT.INT8.ORT_CPU_MODEL", "--calibration-images"]),
    (["--int8", "--calibration-images", "{cal}", "--calibration-method", "entropy", "EXPORT.INT8.ORT_CPU_MODEL", "True"],
     ["EXPORT.INT8.ORT_CPU_MODEL", "min/max only", "entropy"]),
]


@pytest.mark.parametrize("extra, needles", CASES, ids=[" ".join(c[0]).replace("{", "").replace("}", "") for c in CASES])
def test_bad_int8_combination(tmp_path, extra, needles):
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "a.png").write_bytes(b"")  # listed, never read: the check comes first
    cache = tmp_path / "c.cache"
    cache.write_text("TRT-10000-EntropyCalibration2\nx: 3c000000\n")
    args = [a.format(cal=cal, cache=cache) for a in extra]
    # the weights file only has to exist: every case fails before it is loaded
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", str(weights), "--output", str(tmp_path / "o"), *args])
    assert_clean_error(r, *needles)
