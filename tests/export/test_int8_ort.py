"""INT8 in ONNX Runtime's CPU layout (EXPORT.INT8.ORT_CPU_MODEL, issue 16).

Model Optimizer's Q/DQ graph (for TensorRT) quantizes conv inputs only, which ONNX Runtime
cannot fuse; this layout must become integer ``QLinearConv`` kernels in ONNX Runtime's
optimised graph, keep the outputs close to FP32, and honour EXPORT.INT8.EXCLUDE.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")


def _optimized_ops(path, tmp_path):
    """``(op counts, node names)`` of the graph ONNX Runtime actually runs."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    m = onnx.load(opts.optimized_model_filepath)
    return collections.Counter(n.op_type for n in m.graph.node), m


@pytest.fixture(scope="module")
def ort_int8(e2e_onnx, calibration_data, tmp_path_factory):
    from retinakit.export.quantize_ort import quantize_int8_ort

    d = tmp_path_factory.mktemp("int8_ort")
    plain = quantize_int8_ort(e2e_onnx, str(d / "ort.onnx"), calibration_data=calibration_data)
    kept = quantize_int8_ort(e2e_onnx, str(d / "ort_excl.onnx"), calibration_data=calibration_data, exclude=[r"^head\.cls_score$"])
    return plain, kept


def test_onnxruntime_fuses_it_into_integer_convolutions(e2e_onnx, ort_int8, tmp_path):
    import onnx

    from retinakit.export import read_metadata

    n_conv = sum(n.op_type == "Conv" for n in onnx.load(e2e_onnx).graph.node)
    ops, _ = _optimized_ops(ort_int8[0], tmp_path)
    assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0, ops
    assert read_metadata(ort_int8[0])["int8_layout"] == "onnxruntime-cpu"


def test_outputs_close_to_fp32_and_detections_agree(e2e_onnx, ort_int8, calibration_data):
    import onnx

    from retinakit.export.quantize import trunk_output_names
    from retinakit.export.sensitivity import trunk_outputs

    names = trunk_output_names(onnx.load(e2e_onnx))
    ref = trunk_outputs(onnx.load(e2e_onnx), calibration_data, names)
    out = trunk_outputs(onnx.load(ort_int8[0]), calibration_data, names)
    errs = [np.linalg.norm(o - r) / np.linalg.norm(r) for r, o in zip(ref, out) if r.dtype.kind == "f"]
    assert errs and max(errs) < 0.2, errs  # per-tensor U8 activations, min/max ranges: ~0.05 here


def test_excluded_layer_stays_float(ort_int8, tmp_path):
    from retinakit.export.quantize import module_path

    _, m = _optimized_ops(ort_int8[1], tmp_path)
    float_convs = [n for n in m.graph.node if n.op_type in ("Conv", "FusedConv")]
    assert len(float_convs) == 5, [n.name for n in float_convs]  # head.cls_score on each FPN level
    ops, _ = _optimized_ops(ort_int8[1], tmp_path)
    assert ops["QLinearConv"] > 0
    assert all(module_path(n) in ("head.cls_score", "") for n in float_convs)


def test_histogram_methods_are_refused(e2e_onnx, calibration_data, tmp_path):
    from retinakit.config import ConfigError
    from retinakit.export.quantize_ort import quantize_int8_ort

    with pytest.raises(ConfigError, match="min/max only"):
        quantize_int8_ort(e2e_onnx, str(tmp_path / "x.onnx"), calibration_data=calibration_data, method="entropy")
