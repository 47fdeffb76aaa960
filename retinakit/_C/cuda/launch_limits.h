// Launch-configuration limits of the CUDA kernels (no torch, no CUDA dependency: the torch
// glue checks inputs against them on every device before launching, with a clear message).
#pragma once

namespace retinakit {

// gridDim.y and gridDim.z hold at most 65535 blocks. decode_detections puts images on y,
// multiclass_nms's bitmask kernel puts images on z and 64-box column blocks on y.
constexpr long long kCudaMaxGridYZ = 65535;

}  // namespace retinakit
