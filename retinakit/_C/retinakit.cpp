// retinakit._C: the op schemas (declared once) and the Python module that loads them.
// Kernels: cpu/*.cpp (CPU), cuda/*.cu (CUDA), autocast.cpp (Autocast).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(retinakit, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, Tensor idxs, str method, float sigma, float iou_threshold, "
      "float score_threshold) -> (Tensor, Tensor)");
  m.def(
      "decode_detections(Tensor[] cls_logits, Tensor[] box_deltas, Tensor[] anchors, Tensor image_sizes, "
      "float score_thresh, int topk, float[] weights, float scale_clamp) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "multiclass_nms(Tensor boxes, Tensor scores, Tensor classes, Tensor num_valid, str nms_type, "
      "float iou_threshold, int max_detections, str soft_method, float soft_sigma, float soft_score_threshold) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

// `import retinakit._C` loads this shared library, which runs the registrations above.
static struct PyModuleDef rk_module = {PyModuleDef_HEAD_INIT, "_C", "retinakit compiled ops (torch.ops.retinakit)", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&rk_module); }
