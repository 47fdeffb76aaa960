"""retinakit.export.sensitivity_report: the search's verification row, console text and verify.json
entry, on reports built by hand (the search itself is tested in test_int8_sensitivity.py)."""
from __future__ import annotations

import json

from retinakit.export.sensitivity import LayerSensitivity, MixedPrecisionReport, SearchResult, SearchStep
from retinakit.export.sensitivity_report import format_search, search_row, search_summary
from retinakit.export.verify import VerifyResult


def _row(precision: str, ap: float, latency: float, backend: str = "onnxruntime") -> VerifyResult:
    return VerifyResult(backend, precision, latency, 0.1, ap)


def _report(met: bool) -> tuple[MixedPrecisionReport, VerifyResult, VerifyResult]:
    ranking = [LayerSensitivity(f"head.cls_subnet.{i}.conv", [f"/head/conv{i}_p{lvl}" for lvl in range(3, 8)], 0.5 - 0.1 * i, 0.1 * i)
               for i in range(10)]
    ranking[9] = LayerSensitivity("backbone.stem.conv1", ["/stem/Conv"], 0.02, 0.48)
    one = SearchStep(["backbone.stem.conv1"], False, _row("int8-mixed", 30.0, 11.0))
    two = SearchStep(["backbone.stem.conv1", "head.cls_subnet.1.conv"], met, _row("int8-mixed", 39.7 if met else 35.0, 12.0))
    report = MixedPrecisionReport(0.5, ranking, SearchResult(met, two, [one, two]), "/out/model_int8_mixed.onnx")
    return report, _row("int8", 25.0, 10.0), _row("fp32", 40.0, 30.0, backend="pytorch")


def test_met_budget_row_text_and_json():
    report, plain, ref = _report(met=True)
    rows = search_row(report)
    assert [r.status for r in rows] == ["ok: 2 layer(s) in FP32"] and rows[0] is report.search.best.info
    text = format_search(report, plain, ref, tol=0.01)
    lines = text.splitlines()
    assert lines[0] == "INT8 sensitivity (trunk output error, all layers INT8: 0.5000; with one layer in FP32):"
    assert len(lines) == 1 + 8 + 1  # the ranking is cut at 8 layers on the console
    assert lines[1].split() == ["head.cls_subnet.0.conv", "0.5000", "(5", "nodes)"]
    assert lines[-1] == ("INT8 mixed precision meets: kept in FP32: backbone.stem.conv1, head.cls_subnet.1.conv; AP 39.70 "
                         "(all-INT8 25.00, PyTorch 40.00); ONNX Runtime latency 12.0 ms/img vs 10.0 all-INT8 (+20.0%)")
    # as tools/deploy.py lists them when the budget is met: the mixed model is "int8"
    rows[0].precision, plain.precision = "int8", "int8-plain"
    out = search_summary(report, [ref, rows[0], plain])
    assert json.loads(json.dumps(out)) == out  # what verify.json holds
    assert out["met"] is True and out["path"] == "/out/model_int8_mixed.onnx"
    assert out["fp32_layers"] == ["backbone.stem.conv1", "head.cls_subnet.1.conv"]
    assert out["exclude_patterns"] == [r"^backbone\.stem\.conv1$", r"^head\.cls_subnet\.1\.conv$"]
    assert len(out["ranking"]) == 10 and out["ranking"][9] == {"layer": "backbone.stem.conv1", "nodes": ["/stem/Conv"],
                                                               "error_with_layer_fp32": 0.02}
    assert out["steps"] == [{"fp32_layers": ["backbone.stem.conv1"], "ok": False, "ap": 30.0, "latency_ms": 11.0},
                            {"fp32_layers": ["backbone.stem.conv1", "head.cls_subnet.1.conv"], "ok": True, "ap": 39.7,
                             "latency_ms": 12.0}]
    assert out["latency_ms"] == {"all_int8": 10.0, "mixed": 12.0}


def test_missed_budget_says_so():
    report, plain, ref = _report(met=False)
    assert [r.status for r in search_row(report)] == ["best found: 2 layer(s) in FP32"]
    assert "does NOT meet (budget AP >= 39.60; best found)" in format_search(report, plain, ref, tol=0.01)
    out = search_summary(report, [ref, plain, report.search.best.info])
    assert out["met"] is False and out["latency_ms"] == {"all_int8": 10.0, "mixed": 12.0}


def test_no_candidate():
    report, plain, ref = _report(met=False)
    report = MixedPrecisionReport(0.5, report.ranking, SearchResult(False, None, []), None)
    assert search_row(report) == []
    assert format_search(report, plain, ref, 0.01).endswith("no layer lowers the output error when kept in FP32; budget not met.")
    out = search_summary(report, [ref, plain])
    assert out["fp32_layers"] == [] and out["exclude_patterns"] == [] and out["steps"] == [] and out["path"] is None
