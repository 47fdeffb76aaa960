"""Subprocess entry for NVIDIA Model Optimizer (``python -m retinakit.export._modelopt_worker JOB.json``).

Model Optimizer's ``quantize()`` monkey-patches onnxruntime's calibrators for the rest of
the process, so retinakit always runs it in a child process. The job file says what to do:
``{"task": "fp16"|"int8", "input": ..., "output": ..., ...}`` (see ``retinakit.export.quantize``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from typing import Any

import numpy as np


def _trunk_model(src: str, dst: str) -> list[str]:
    """Write ``src`` up to the backbone/head outputs (before post-processing) to ``dst``; returns its inputs.

    The post-processing outputs have a data-dependent size (detections kept per image), which
    onnxruntime's histogram calibrators cannot stack; the trunk's tensors have fixed shapes.
    """
    import onnx

    from retinakit.export.quantize import trunk_output_names

    model = onnx.load(src)
    inputs = [i.name for i in model.graph.input]
    outputs = trunk_output_names(model)
    sub = onnx.utils.Extractor(model).extract_model(inputs, outputs)
    onnx.save(sub, dst)
    return inputs


def _percentile_cache(job: dict[str, Any], data: dict[str, np.ndarray], cache_path: str) -> None:
    """Percentile ranges of the trunk's tensors with onnxruntime's calibrator, as a TensorRT-style cache."""
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(data["images"]):
                return None
            self.i += 1
            return {k: data[k][self.i - 1 : self.i] for k in inputs}

    with tempfile.TemporaryDirectory() as tmp:
        trunk = os.path.join(tmp, "trunk.onnx")
        inputs = _trunk_model(job["input"], trunk)
        cal = create_calibrator(
            trunk, op_types_to_calibrate=None, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "num_bins": 2048, "percentile": float(job["percentile"])},
        )
        cal.collect_data(Reader())
        ranges = cal.compute_data()
    scales = {}
    for name, rng in ranges.data.items():
        lo, hi = (float(np.asarray(v).max()) for v in (np.abs(rng.range_value[0]), np.abs(rng.range_value[1])))
        scales[name] = max(lo, hi, 1e-8) / 127.0
    from retinakit.export.calib_cache import write_cache

    write_cache(cache_path, scales)


def _int8(job: dict[str, Any]) -> None:
    data = dict(np.load(job["data"])) if job.get("data") else None
    with tempfile.TemporaryDirectory(prefix="retinakit_pct_") as tmp:
        cache = job.get("cache_in") or None
        if job["method"] == "percentile" and cache is None:
            cache = os.path.join(tmp, "percentile.cache")
            _percentile_cache(job, data, cache)
        _quantize(job, data, cache)


def _quantize(job: dict[str, Any], data: dict[str, np.ndarray] | None, cache: str | None) -> None:
    from modelopt.onnx.quantization import quantize

    if data is None:  # scales come from the cache; one blank sample only drives the quantizer
        data = {k: np.asarray(v, dtype=np.float32) for k, v in job["blank"].items()}
    shapes = ",".join(f"{k}:1x" + "x".join(str(d) for d in v.shape[1:]) for k, v in data.items())
    quantize(
        onnx_path=job["input"], quantize_mode="int8", calibration_data=data, calibration_shapes=shapes,
        calibration_method="max" if job["method"] == "percentile" else job["method"],
        calibration_cache_path=cache, calibration_eps=["cpu"], high_precision_dtype=job.get("high_precision", "fp32"),
        nodes_to_exclude=job.get("nodes_to_exclude") or None, output_path=job["output"], log_level="WARNING",
    )


def _fp16(job: dict[str, Any]) -> None:
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    model = convert_to_mixed_precision(
        job["input"], low_precision_type="fp16", nodes_to_exclude=job.get("nodes_to_exclude") or None,
        op_types_to_exclude=job.get("op_types_to_exclude") or None, keep_io_types=True, providers=["cpu"],
    )
    # Autocast's shape inference can leave inconsistent symbolic shapes on intermediate
    # tensors (onnxruntime then rejects buffer reuse): runtimes infer them again anyway.
    del model.graph.value_info[:]
    onnx.save(model, job["output"])


def main(argv: list) -> int:
    logging.basicConfig(level=logging.WARNING)
    with open(argv[1]) as f:
        job = json.load(f)
    {"int8": _int8, "fp16": _fp16}[job["task"]](job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
