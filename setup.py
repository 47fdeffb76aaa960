"""Build retinakit and its compiled extension ``retinakit._C``.

C++ sources (``retinakit/_C/*.cpp``, ``retinakit/_C/cpu/*.cpp``) are always built.
CUDA sources (``retinakit/_C/cuda/*.cu``) are built when CUDA is usable or when
``FORCE_CUDA=1`` (``TORCH_CUDA_ARCH_LIST`` picks the architectures).
Install with ``pip install --no-build-isolation -e .`` so the build uses the torch
that is already installed.
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - explained to the user
    raise SystemExit(
        "retinakit's build needs torch installed first (e.g. pip install torch==2.14.0 torchvision==0.29.0), "
        "then: pip install --no-build-isolation -e ."
    ) from e

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("retinakit", "_C")


def _use_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def get_extensions():
    if os.environ.get("RETINAKIT_NO_EXT", "0") == "1":
        # `make` installs dependencies first and builds the extension once, in place, afterwards.
        return []
    sources = sorted(glob.glob(os.path.join(SRC, "*.cpp")) + glob.glob(os.path.join(SRC, "cpu", "*.cpp")))
    if not sources:
        return []
    cuda_sources = sorted(glob.glob(os.path.join(SRC, "cuda", "*.cu")) + glob.glob(os.path.join(SRC, "cuda", "*.cpp")))
    # No FMA contraction: the kernels reproduce torchvision's float arithmetic exactly.
    extra_compile_args = {"cxx": ["-O3", "-ffp-contract=off"]}
    define_macros = []
    ext_cls = CppExtension
    if _use_cuda() and cuda_sources:
        ext_cls = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
    return [
        ext_cls(
            "retinakit._C",
            sources,
            include_dirs=[os.path.join(HERE, SRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


EXTRAS = {
    # dev: the test tools plus the optional packages whose code paths the tests cover
    # (TensorBoard writer, safetensors checkpoints, faster-coco-eval); tritonclient[grpc] ships Triton's
    # ModelConfig protobuf (model_config_pb2) that the tests parse the written config.pbtxt into.
    "dev": [
        "pytest>=7", "hypothesis", "ruff>=0.17,<0.18", "mypy>=2.4,<2.5", "pytest-timeout", "tensorboard", "safetensors", "faster-coco-eval",
        "tritonclient[grpc]>=2.40",
    ],
    # NVIDIA Model Optimizer (FP16 autocast, INT8 Q/DQ PTQ) with its ONNX helpers listed by hand:
    # nvidia-modelopt[onnx] would pin onnx~=1.21 / onnxruntime-gpu~=1.24 / cupy (docs/deployment.md).
    "deploy": [
        "onnx>=1.16", "onnxruntime>=1.18", "onnxscript",
        "nvidia-modelopt>=0.47,<0.48", "onnx-graphsurgeon>=0.6.1", "onnxconverter-common>=1.16",
        "onnxslim", "polygraphy", "lief", "cppimport",
    ],
    "dali": ["nvidia-dali-cuda130"],
    "video": ["av"],  # PyAV: video files as input of tools/infer.py
    "tensorboard": ["tensorboard"],  # TensorBoard event files from the trainer (make demo installs it)
    # cuda-python 12.6.0 has no cuda.bindings (added in 12.6.1). tensorrt, cuda-python and the driver
    # must share a CUDA major version (docs/deployment.md).
    "tensorrt": ["tensorrt>=10,<12", "cuda-python>=12.6.1"],
}

setup(
    name="retinakit",
    version="0.1.0",
    description="A registry-based RetinaNet library: train, extend and deploy (ONNX, TensorRT FP16/INT8).",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["retinakit", "retinakit.*"]),
    package_data={"retinakit": ["py.typed"]},
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.7",
        "msgspec>=0.18",  # fast typed JSON parsing of COCO files and the dataset cache (retinakit/data)
        "tabulate",
        "pyyaml>=5.1",
        "numpy",
        "pillow",
        "tqdm",
        "matplotlib",
    ],
    extras_require=EXTRAS,
    # `retinakit train|infer|export`: NVIDIA retinanet-examples' command line (docs/odtk_migration.md)
    entry_points={"console_scripts": ["retinakit = retinakit.cli:main"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
