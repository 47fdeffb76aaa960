"""EXPORT.* defaults (deployment: ONNX, FP16/INT8, TensorRT; see docs/deployment.md)."""
from ..config import CfgNode as CN


def add_export_config(_C: CN) -> None:
    _C.EXPORT = CN()
    # ONNX opset of exported graphs (>= 18: NonMaxSuppression, TopK, ScatterND as used by the e2e graph).
    _C.EXPORT.OPSET = 18
    # "e2e": normalisation + backbone + head + decode + NMS with outputs num_dets/boxes/scores/classes;
    # "heads": raw per-level cls_logits_i / box_deltas_i (bring your own post-processing).
    _C.EXPORT.MODE = "e2e"
    # Use the legacy TorchScript exporter instead of torch.export (heads mode only; a fallback for old torch).
    _C.EXPORT.LEGACY_EXPORTER = False
    # (height, width) of the example traced at export; the graph keeps batch/height/width dynamic.
    _C.EXPORT.EXAMPLE_SIZE = (320, 320)
    # tools/deploy.py --winograd: 3x3 convolutions with at least this many input channels are
    # rewritten as Winograd F(4x4,3x3) in DIR/model_winograd.onnx (for ONNX Runtime on CPU).
    _C.EXPORT.WINOGRAD_MIN_CHANNELS = 256

    _C.EXPORT.INT8 = CN()
    # Calibration method: "entropy", "max" or "percentile" (percentile of |activation|).
    _C.EXPORT.INT8.CALIBRATION_METHOD = "max"
    # Percentile used by the "percentile" method.
    _C.EXPORT.INT8.PERCENTILE = 99.999
    # Calibration images used (evenly spaced over the folder when it holds more; 0 = all).
    _C.EXPORT.INT8.NUM_IMAGES = 64
    # An INT8 model fails verification when its AP is below (1 - this) x the PyTorch AP (MLPerf: 1%).
    _C.EXPORT.INT8.MAX_RELATIVE_AP_DROP = 0.01
    # Regular expressions: backbone/head nodes whose ONNX node name or module path (e.g.
    # "head.cls_score", "backbone.bottom_up.layer1.0") matches one stay in FP32 in the INT8 model.
    _C.EXPORT.INT8.EXCLUDE = []
    # tools/deploy.py --int8 also writes DIR/model_int8_ort.onnx: INT8 in the layout ONNX Runtime's CPU
    # provider fuses into integer kernels (QLinearConv; Q/DQ on conv outputs too, U8S8, min/max
    # calibration). Faster than FP32 in ONNX Runtime on CPU; not for TensorRT (docs/deployment.md).
    _C.EXPORT.INT8.ORT_CPU_MODEL = False
    _C.EXPORT.INT8.SENSITIVITY = CN()
    # tools/deploy.py --int8 --verify: when the INT8 model misses MAX_RELATIVE_AP_DROP, rank the
    # backbone/head layers by INT8 sensitivity (output error with one layer restored to FP32) and keep
    # the most sensitive ones in FP32, one more at a time, until the AP budget holds. False: report
    # the failure only.
    _C.EXPORT.INT8.SENSITIVITY.ENABLED = True
    # At most this many layers (module paths, e.g. "head.cls_score") are kept in FP32.
    _C.EXPORT.INT8.SENSITIVITY.MAX_LAYERS = 6
    # Images of the ranking (the first calibration images; the validation images without them).
    _C.EXPORT.INT8.SENSITIVITY.NUM_IMAGES = 8

    _C.EXPORT.TENSORRT = CN()
    # Builder workspace memory limit (MiB).
    _C.EXPORT.TENSORRT.WORKSPACE_MIB = 4096
    # Optimisation profile: batch sizes (min, opt, max) the engine accepts.
    _C.EXPORT.TENSORRT.BATCH = (1, 1, 8)
    # Smallest padded input (height, width); the largest defaults to INPUT.MAX_SIZE_TEST rounded up.
    _C.EXPORT.TENSORRT.MIN_HW = (128, 128)
    # Builder optimisation level (0-5; higher builds slower, may run faster).
    _C.EXPORT.TENSORRT.OPTIMIZATION_LEVEL = 3
    # Timing cache file reused across builds ("" = <output dir>/timing.cache).
    _C.EXPORT.TENSORRT.TIMING_CACHE = ""

    # tools/deploy.py --triton-repo DIR: a Triton model repository (docs/deployment.md, "Triton").
    _C.EXPORT.TRITON = CN()
    # Model name: the folder DIR/NAME and config.pbtxt's name (--triton-name).
    _C.EXPORT.TRITON.NAME = "retinakit"
    # Largest batch Triton's dynamic batcher forms (--max-batch); an engine's must be <= EXPORT.TENSORRT.BATCH[2].
    _C.EXPORT.TRITON.MAX_BATCH_SIZE = 8
    # Instance group kind: "auto" (GPU when present, else CPU; engines: GPU), "gpu" or "cpu".
    _C.EXPORT.TRITON.INSTANCE_KIND = "auto"
    # Dynamic batching: how long a request may wait for others to form a batch (microseconds).
    _C.EXPORT.TRITON.MAX_QUEUE_DELAY_US = 100

    # tools/deploy.py --deepstream DIR: a DeepStream nvinfer config (docs/deployment.md, "DeepStream").
    _C.EXPORT.DEEPSTREAM = CN()
    # Network input (height, width) = nvinfer's infer-dims: multiples of the backbone's size
    # divisibility; () = INPUT.MIN_SIZE_TEST square, rounded up. Match your streams' aspect ratio.
    _C.EXPORT.DEEPSTREAM.INPUT_SIZE = ()
    # nvinfer batch-size (frames per inference; the graph's batch is dynamic).
    _C.EXPORT.DEEPSTREAM.BATCH_SIZE = 1
    # nvinfer maintain-aspect-ratio: scale frames keeping their aspect ratio, pad bottom/right.
    _C.EXPORT.DEEPSTREAM.MAINTAIN_ASPECT_RATIO = True
