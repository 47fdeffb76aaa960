"""INT8 sensitivity search (issue 16): rank layers by output error with one layer restored to
FP32, then keep the most sensitive ones in FP32 until a budget holds.

The case is constructed, not trained: in the random quickstart model's ONNX, one output channel
of a backbone conv is scaled by 1000 and the next conv's weights for that channel by 1/1000
(ReLU between them commutes with the scaling), so the FP32 function is unchanged but the next
conv's input has one channel of huge outliers: per-tensor INT8 flushes every other channel to
zero. The search must find exactly that conv.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")

PRODUCER, CONSUMER = "backbone.bottom_up.layer1.0.bn1", "backbone.bottom_up.layer1.0.bn2"
SCALE, CHANNEL = 1000.0, 3


def _outlier_model(src: str, dst: str) -> None:
    """Scale channel ``CHANNEL`` of PRODUCER's output by SCALE and CONSUMER's weights for it by 1/SCALE."""
    import onnx
    from onnx import numpy_helper

    from retinakit.export.quantize import module_path

    m = onnx.load(src)
    inits = {i.name: i for i in m.graph.initializer}
    by_path = {module_path(n): n for n in m.graph.node if n.op_type == "Conv"}
    producer, consumer = by_path[PRODUCER], by_path[CONSUMER]
    between = {o: n for n in m.graph.node for o in n.output}[consumer.input[0]]
    assert between.op_type == "Relu" and between.input[0] == producer.output[0], "the two convs are not conv-ReLU-conv"

    def edit(name, fn):
        arr = numpy_helper.to_array(inits[name]).copy()
        fn(arr)
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    edit(producer.input[1], lambda w: w.__setitem__(CHANNEL, w[CHANNEL] * SCALE))
    edit(producer.input[2], lambda b: b.__setitem__(CHANNEL, b[CHANNEL] * SCALE))
    edit(consumer.input[1], lambda w: w.__setitem__((slice(None), CHANNEL), w[:, CHANNEL] / SCALE))
    onnx.save(m, dst)


@pytest.fixture(scope="module")
def outlier(e2e_onnx, calibration_data, tmp_path_factory):
    """``(fp32 path, int8 path, cache path)`` of the outlier-heavy model (max calibration)."""
    from retinakit.export import quantize_int8

    d = tmp_path_factory.mktemp("outlier")
    fp32 = str(d / "model.onnx")
    _outlier_model(e2e_onnx, fp32)
    cache = str(d / "calibration.cache")
    int8 = quantize_int8(fp32, str(d / "model_int8.onnx"), calibration_data=calibration_data, method="max", cache_path=cache)
    return fp32, int8, cache


def _names(fp32_path):
    """The backbone/head outputs (read from the FP32 graph: Q/DQ nodes carry no module scope)."""
    import onnx

    from retinakit.export.quantize import trunk_output_names

    return trunk_output_names(onnx.load(fp32_path))


def _trunk(path, data, names):
    import onnx

    from retinakit.export.sensitivity import trunk_outputs

    return trunk_outputs(onnx.load(path), data, names)


def _rel_error(ref, out):
    return float(np.mean([np.linalg.norm(o - r) / np.linalg.norm(r) for r, o in zip(ref, out) if r.dtype.kind == "f"]))


def test_outlier_model_is_unchanged_in_fp32(e2e_onnx, outlier, calibration_data):
    names = _names(e2e_onnx)
    ref, out = _trunk(e2e_onnx, calibration_data, names), _trunk(outlier[0], calibration_data, names)
    assert _rel_error(ref, out) < 1e-4


def test_restoring_every_layer_gives_the_fp32_outputs(outlier, calibration_data):
    import onnx

    from retinakit.export.sensitivity import layer_groups, restore_fp32, trunk_outputs

    fp32, int8, _ = outlier
    q = onnx.load(int8)
    nodes = [n for group in layer_groups(onnx.load(fp32), q).values() for n in group]
    names = _names(fp32)
    ref = _trunk(fp32, calibration_data, names)
    assert _rel_error(ref, trunk_outputs(q, calibration_data, names)) > 0.1, "the outlier should wreck plain INT8"
    assert _rel_error(ref, trunk_outputs(restore_fp32(q, nodes), calibration_data, names)) < 1e-4


def test_search_keeps_exactly_the_outlier_layer_in_fp32(outlier, calibration_data, tmp_path):
    import onnx

    from retinakit.export.sensitivity import layer_groups, mixed_precision_int8

    fp32, int8, cache = outlier
    names = _names(fp32)
    ref = _trunk(fp32, calibration_data, names)
    plain_error = _rel_error(ref, _trunk(int8, calibration_data, names))
    budget = 0.1  # a clean model of this architecture quantizes to ~0.05 (checked below for the result)
    assert plain_error > budget

    def accept(path):
        err = _rel_error(ref, _trunk(path, calibration_data, names))
        return err <= budget, err

    out = str(tmp_path / "mixed.onnx")
    inputs = {k: v[:4] for k, v in calibration_data.items()}
    report = mixed_precision_int8(fp32, int8, out, cache_path=cache, method="max", inputs=inputs, accept=accept,
                                  max_layers=3, score=lambda e: -e)
    assert report.ranking[0].layer == CONSUMER, [(s.layer, s.error) for s in report.ranking[:3]]
    assert report.search.met and report.excluded == [CONSUMER], report.search
    assert report.search.best.info <= budget < plain_error
    # The written model: the consumer conv reads FP32 input and weight; the others are still quantized.
    model = onnx.load(report.path)
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = set(layer_groups(onnx.load(fp32))[CONSUMER])  # its Conv node
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    deq = {n.name: [getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in n.input[:2]] for n in convs}
    assert all(not any(deq[n]) for n in kept), {n: deq[n] for n in kept}
    assert sum(all(v) for k, v in deq.items() if k not in kept) >= len(convs) // 2


def test_search_reports_the_best_when_the_budget_is_out_of_reach(outlier, calibration_data, tmp_path):
    from retinakit.export.sensitivity import LayerSensitivity, search_exclusions

    ranking = [LayerSensitivity("a", ["n1"], 0.1, 0.5), LayerSensitivity("b", ["n2"], 0.2, 0.4),
               LayerSensitivity("c", ["n3"], 0.6, -0.1)]
    seen = []

    def check(layers):
        seen.append(list(layers))
        return False, {"a": 3.0, "a,b": 2.0}[",".join(layers)]

    result = search_exclusions(ranking, check, max_layers=5, score=lambda x: x)
    assert seen == [["a"], ["a", "b"]], "layers that do not lower the error are not tried"
    assert not result.met and result.best.excluded == ["a"] and result.best.info == 3.0
