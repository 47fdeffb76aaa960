"""How the INT8 sensitivity search is shown: a verification row, console text, verify.json.

The search (:func:`retinakit.export.sensitivity.mixed_precision_int8`) judges each candidate
with the caller's check; ``tools/deploy.py`` stores a :class:`~retinakit.export.verify.VerifyResult`
in each step's ``info``. These functions turn its :class:`MixedPrecisionReport` into what the
user sees. Precision labels of the verification rows: ``int8`` (the deliverable; the mixed
model when the budget was met), ``int8-plain`` (the all-INT8 model it replaced) and
``int8-mixed`` (the best candidate when the budget was not met).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sensitivity import MixedPrecisionReport, layer_pattern
from .verify import VerifyResult

__all__ = ["format_search", "search_row", "search_summary"]

_RANKING_SHOWN = 8  # the console shows the most sensitive layers; verify.json has them all


def search_row(report: MixedPrecisionReport) -> list[VerifyResult]:
    """The verification row of the best candidate, its status saying how many layers stay FP32
    (an empty list when no candidate was tried)."""
    best = report.search.best
    if best is None:
        return []
    row = best.info
    row.status = f"{'ok' if report.search.met else 'best found'}: {len(best.excluded)} layer(s) in FP32"
    return [row]


def format_search(report: MixedPrecisionReport, plain: VerifyResult, ref: VerifyResult, tol: float) -> str:
    """Console text: the ranking (first 8 layers) and the verdict with AP and latency.

    Args:
        plain: the all-INT8 model's row; ``ref``: PyTorch's row; ``tol``: the relative AP budget.
    """
    lines = [f"INT8 sensitivity (trunk output error, all layers INT8: {report.error_int8:.4f}; with one layer in FP32):"]
    for x in report.ranking[:_RANKING_SHOWN]:
        lines.append(f"  {x.layer:<45} {x.error:.4f}  ({len(x.nodes)} node{'s' if len(x.nodes) > 1 else ''})")
    best = report.search.best
    if best is None:
        lines.append("INT8 sensitivity search: no layer lowers the output error when kept in FP32; budget not met.")
        return "\n".join(lines)
    r = best.info
    cost = (r.latency_ms / plain.latency_ms - 1.0) * 100.0 if plain.latency_ms > 0 else float("nan")
    verdict = "meets" if report.search.met else f"does NOT meet (budget AP >= {ref.ap * (1 - tol):.2f}; best found)"
    lines.append(f"INT8 mixed precision {verdict}: kept in FP32: {', '.join(best.excluded)}; AP {r.ap:.2f} "
                 f"(all-INT8 {plain.ap:.2f}, PyTorch {ref.ap:.2f}); ONNX Runtime latency {r.latency_ms:.1f} ms/img "
                 f"vs {plain.latency_ms:.1f} all-INT8 ({cost:+.1f}%)")
    return "\n".join(lines)


def search_summary(report: MixedPrecisionReport, results: Sequence[VerifyResult]) -> dict[str, Any]:
    """verify.json's ``int8_search``: verdict, layers kept in FP32 (and their EXCLUDE patterns),
    the full ranking, every step, and the ONNX Runtime latency (ms/img) all-INT8 vs mixed."""
    lat = {r.precision: r.latency_ms for r in results if r.backend == "onnxruntime"}
    excluded = report.excluded
    return {
        "met": report.search.met,
        "fp32_layers": excluded,
        "exclude_patterns": [layer_pattern(x) for x in excluded],
        "error_all_int8": report.error_int8,
        "ranking": [{"layer": x.layer, "nodes": x.nodes, "error_with_layer_fp32": x.error} for x in report.ranking],
        "steps": [{"fp32_layers": st.excluded, "ok": st.ok, "ap": st.info.ap, "latency_ms": st.info.latency_ms}
                  for st in report.search.steps],
        "latency_ms": {"all_int8": lat.get("int8-plain" if report.search.met else "int8"),
                       "mixed": lat.get("int8" if report.search.met else "int8-mixed")},
        "path": report.path,
    }
