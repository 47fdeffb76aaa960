"""INT8 on the e2e export: every calibration method runs; EXPORT.INT8.EXCLUDE keeps nodes in FP32.

Issue 16: ``percentile`` crashed in onnxruntime's calibrator on the e2e graph (the detections'
size depends on the data); it now calibrates the backbone/head part before post-processing.
"""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import ort_run

pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")


def _head_outputs(path, data):
    return ort_run(path, data["images"][:2], data["image_sizes"][:2])


def _conv_inputs_dequantized(model) -> dict[str, bool]:
    """``{conv node name: whether its activation input comes from a DequantizeLinear}``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"
            for n in model.graph.node if n.op_type == "Conv"}


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_every_calibration_method_runs_on_e2e_export(e2e_onnx, calibration_data, tmp_path, method):
    import onnx

    from retinakit.export import quantize_int8
    from retinakit.export.calib_cache import read_cache

    cache = str(tmp_path / "c.cache")
    path = quantize_int8(e2e_onnx, str(tmp_path / "q.onnx"), calibration_data=calibration_data, method=method,
                         cache_path=cache)
    q = onnx.load(path)
    convs = _conv_inputs_dequantized(q)
    assert convs and sum(convs.values()) >= len(convs) // 2, convs
    scales = read_cache(cache)
    assert scales and all(np.isfinite(v) and v > 0 for v in scales.values())
    ref, out = _head_outputs(e2e_onnx, calibration_data), _head_outputs(path, calibration_data)
    assert [a.shape[1:] for a in ref] == [b.shape[1:] for b in out]


def test_exclude_patterns_keep_nodes_in_fp32(e2e_onnx, calibration_data, tmp_path):
    import onnx

    from retinakit.export import quantize_int8
    from retinakit.export.quantize import excluded_node_names

    proto = onnx.load(e2e_onnx, load_external_data=False)
    kept = excluded_node_names(proto, [r"^head\.cls_score$"])
    assert kept, "the pattern matched nothing"
    path = quantize_int8(e2e_onnx, str(tmp_path / "q.onnx"), calibration_data=calibration_data, method="max",
                         exclude=[r"^head\.cls_score$"])
    convs = _conv_inputs_dequantized(onnx.load(path))
    plain = quantize_int8(e2e_onnx, str(tmp_path / "plain.onnx"), calibration_data=calibration_data, method="max")
    plain_convs = _conv_inputs_dequantized(onnx.load(plain))
    assert all(plain_convs[n] for n in kept if n in plain_convs), "without EXCLUDE the node should be quantized"
    kept_convs = [n for n in kept if n in convs]
    assert kept_convs and not any(convs[n] for n in kept_convs), (kept_convs, convs)
    assert any(convs[n] for n in convs if n not in kept), "nothing else was quantized"


def test_exclude_pattern_errors(e2e_onnx):
    import onnx

    from retinakit.config import ConfigError
    from retinakit.export.quantize import excluded_node_names

    proto = onnx.load(e2e_onnx, load_external_data=False)
    with pytest.raises(ConfigError, match=r"EXPORT\.INT8\.EXCLUDE.*matches no"):
        excluded_node_names(proto, ["no_such_module_xyz"])
    with pytest.raises(ConfigError, match="invalid regular expression"):
        excluded_node_names(proto, ["(unclosed"])
