"""Winograd F(4x4, 3x3) rewrite of an ONNX graph's 3x3 convolutions, for ONNX Runtime on CPU.

A 3x3 stride-1 convolution computes every 4x4 block of output pixels from a 6x6 block of
input pixels. Winograd's minimal filtering (Lavin & Gray, 2016) computes that block as

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (per input/output channel pair, summed over C)

with 36 multiplications instead of 144: the filter transform ``U = G w G^T`` is done once at
export time, the input transform ``V = B^T d B`` is a fixed 6x6 stride-4 convolution of each
channel, the channel sum becomes 36 independent matrix products ``U[xi] @ V[xi]``
(``[K, C] @ [C, tiles]``) and the output transform ``A^T . A`` is one more small product.
The arithmetic stays FP32; the result differs from direct convolution by float rounding only
(about 1e-5 relative: the transforms have entries up to 8). TensorRT and cuDNN choose
Winograd kernels themselves, and ONNX Runtime's CPU convolution (MLAS) already runs close to
the machine's FP32 peak, so at 800x1216 the only way left to speed up R50-FPN RetinaNet on
CPU is doing less arithmetic (docs/benchmarks.md). Use the rewritten graph with ONNX
Runtime on CPU only: give TensorRT and INT8 quantization the plain export.

Only convolutions with constant weights, kernel 3x3, stride 1, padding 1, dilation 1, one
group, at least ``min_channels`` input channels and an NCHW input are rewritten; everything
else is left as it is. Shapes stay dynamic (batch, height and width).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ._deps import require

__all__ = ["WINOGRAD_ALGORITHM", "winograd_filter", "winograd_onnx", "winograd_rewrite"]

logger = logging.getLogger(__name__)

WINOGRAD_ALGORITHM = "winograd_f4x4_3x3"

# F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_BT = np.array([
    [4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1],
], dtype=np.float64)
_G = np.array([
    [1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1],
], dtype=np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64)
TILE_OUT, TILE_IN = 4, 6
_PREFIX = WINOGRAD_ALGORITHM  # names of the added nodes and initializers


def winograd_filter(weight: np.ndarray) -> np.ndarray:
    """Filter transform: ``[K, C, 3, 3]`` weights -> ``U [36, K, C]`` float32 (``U[6i+j] = (G w G^T)[i, j]``)."""
    u = np.einsum("ia,kcab,jb->ijkc", _G, weight.astype(np.float64), _G)
    return u.reshape(TILE_IN * TILE_IN, weight.shape[0], weight.shape[1]).astype(np.float32)


def input_transform_kernels() -> np.ndarray:
    """``[36, 1, 6, 6]``: convolving one channel with kernel ``6i+j`` gives ``(B^T d B)[i, j]`` per tile."""
    return np.einsum("ia,jb->ijab", _BT, _BT).reshape(TILE_IN * TILE_IN, 1, TILE_IN, TILE_IN).astype(np.float32)


def output_transform() -> np.ndarray:
    """``[36, 16]``: a tile's 36 products times this matrix give its 4x4 outputs (row-major)."""
    return np.einsum("ia,jb->ijab", _AT, _AT).reshape(TILE_OUT * TILE_OUT, TILE_IN * TILE_IN).T.copy().astype(np.float32)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _eligible(node: Any, inits: dict[str, Any], min_channels: int) -> bool:
    """Whether ``node`` is a 3x3/stride 1/pad 1 ungrouped Conv with initializer weights (``inits``: name -> TensorProto)."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    w = inits.get(node.input[1])
    if w is None or len(w.dims) != 4 or tuple(w.dims[2:]) != (3, 3) or w.dims[1] < min_channels:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return False
    return (
        _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and list(_attr(node, "strides", [1, 1])) == [1, 1]
        and list(_attr(node, "dilations", [1, 1])) == [1, 1]
        and list(_attr(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
        and _attr(node, "group", 1) == 1
    )


class _Builder:
    """Adds the shared constants once and emits one convolution's replacement nodes."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.names = {i.name for i in graph.initializer}
        consts = {
            "Bk": input_transform_kernels(), "AT": output_transform(),
            "hw_axes": np.array([2, 3], np.int64), "three": np.array([3], np.int64), "four": np.array([4], np.int64),
            "four2": np.array([4, 4], np.int64), "zero2": np.array([0, 0], np.int64), "one": np.array([1], np.int64),
            "minus1": np.array([-1], np.int64), "axis0": np.array([0], np.int64), "n36": np.array([36], np.int64),
        }
        for k, v in consts.items():
            self.add_const(self.c(k), v)

    def add_const(self, name: str, value: np.ndarray) -> str:
        """Add initializer ``name`` unless the graph has it already; returns ``name``."""
        from onnx import numpy_helper

        if name not in self.names:
            self.names.add(name)
            self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    @staticmethod
    def c(name: str) -> str:
        return f"{_PREFIX}/{name}"

    def nodes(self, conv: Any, u_name: str, k: int, c: int, bias_name: str | None, tag: str) -> list[Any]:
        """Nodes computing ``conv``'s output ``[N, K, H, W]`` from its input ``[N, C, H, W]``."""
        from onnx import helper

        x, y = conv.input[0], conv.output[0]
        t = lambda s: f"{tag}/{s}"  # noqa: E731 - local name helper
        c_ = self.c
        for v in (k, c):
            self.add_const(c_(f"c{v}"), np.array([v], np.int64))
        out = [
            # th, tw = ceil(H / 4), ceil(W / 4)
            helper.make_node("Shape", [x], [t("shape")], name=t("shape")),
            helper.make_node("Gather", [t("shape"), c_("hw_axes")], [t("hw")], name=t("hw")),
            helper.make_node("Gather", [t("shape"), c_("axis0")], [t("n")], name=t("n")),
            helper.make_node("Add", [t("hw"), c_("three")], [t("hw3")], name=t("hw3")),
            helper.make_node("Div", [t("hw3"), c_("four")], [t("tiles")], name=t("tiles")),
            helper.make_node("Mul", [t("tiles"), c_("four")], [t("hw_out")], name=t("hw_out")),
            # Input transform: every channel alone, 6x6 windows at stride 4 -> [N*C, 36, th, tw].
            # Padding 1 (top/left) and 4 (bottom/right) gives exactly th x tw windows.
            helper.make_node("Concat", [c_("minus1"), c_("one"), t("hw")], [t("s_chan")], axis=0, name=t("s_chan")),
            helper.make_node("Reshape", [x, t("s_chan")], [t("x1")], name=t("x1")),
            helper.make_node("Conv", [t("x1"), c_("Bk")], [t("v0")], strides=[4, 4], pads=[1, 1, 4, 4], name=t("vconv")),
            # [N, C, 36, P] -> [36, C, N, P] -> [36, C, N*P]
            helper.make_node("Concat", [t("n"), c_(f"c{c}"), c_("n36"), c_("minus1")], [t("s_v1")], axis=0, name=t("s_v1")),
            helper.make_node("Reshape", [t("v0"), t("s_v1")], [t("v1")], name=t("v1")),
            helper.make_node("Transpose", [t("v1")], [t("v2")], perm=[2, 1, 0, 3], name=t("v2")),
            helper.make_node("Concat", [c_("n36"), c_(f"c{c}"), c_("minus1")], [t("s_v")], axis=0, name=t("s_v")),
            helper.make_node("Reshape", [t("v2"), t("s_v")], [t("v")], name=t("v")),
            # 36 products [K, C] @ [C, N*P] -> [36, K, N*P]
            helper.make_node("MatMul", [u_name, t("v")], [t("m")], name=t("gemm")),
            # Output transform, tiles as rows: [36, K*N*P]^T @ [36, 16] -> [K*N*P, 16]
            helper.make_node("Concat", [c_("n36"), c_("minus1")], [t("s_m")], axis=0, name=t("s_m")),
            helper.make_node("Reshape", [t("m"), t("s_m")], [t("m2")], name=t("m2")),
            helper.make_node("Gemm", [t("m2"), c_("AT")], [t("y0")], transA=1, name=t("ytrans")),
            # [K, N, th, tw, 4, 4] -> [N, K, th, 4, tw, 4] -> [N, K, 4th, 4tw] -> crop to [N, K, H, W]
            helper.make_node("Concat", [c_(f"c{k}"), t("n"), t("tiles"), c_("four2")], [t("s_y1")], axis=0, name=t("s_y1")),
            helper.make_node("Reshape", [t("y0"), t("s_y1")], [t("y1")], name=t("y1")),
            helper.make_node("Transpose", [t("y1")], [t("y2")], perm=[1, 0, 2, 4, 3, 5], name=t("y2")),
            helper.make_node("Concat", [t("n"), c_(f"c{k}"), t("hw_out")], [t("s_y3")], axis=0, name=t("s_y3")),
            helper.make_node("Reshape", [t("y2"), t("s_y3")], [t("y3")], name=t("y3")),
        ]
        crop = t("y4") if bias_name else y
        out.append(helper.make_node("Slice", [t("y3"), c_("zero2"), t("hw"), c_("hw_axes")], [crop], name=t("crop")))
        if bias_name:
            out.append(helper.make_node("Add", [crop, bias_name], [y], name=t("bias")))
        return out


def winograd_rewrite(proto: Any, min_channels: int = 256) -> int:
    """Rewrite the eligible 3x3 convolutions of ``proto`` (an ``onnx.ModelProto``) in place.

    Args:
        proto: the model; its main graph is rewritten (subgraphs are left alone).
        min_channels: smallest input channel count to rewrite. With fewer channels the fixed
            cost of the transforms outweighs the saved multiplications (R50-FPN at 800x1216:
            256 is fastest, docs/benchmarks.md).

    Returns:
        The number of convolutions rewritten.
    """
    require("onnx", "the Winograd rewrite")
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}  # arrays are read only for the rewritten convolutions
    builder: _Builder | None = None
    new_nodes, count = [], 0
    for i, node in enumerate(graph.node):
        if not _eligible(node, inits, min_channels):
            new_nodes.append(node)
            continue
        builder = builder or _Builder(graph)
        w_name = node.input[1]
        u_name = f"{w_name}/{_PREFIX}_U"
        if u_name not in builder.names:  # a weight shared by several convolutions is transformed once
            builder.add_const(u_name, winograd_filter(numpy_helper.to_array(inits[w_name])))
        bias_name = None
        if len(node.input) > 2 and node.input[2]:
            bias_name = f"{node.input[2]}/{_PREFIX}_bias"
            if bias_name not in builder.names:
                builder.add_const(bias_name, numpy_helper.to_array(inits[node.input[2]]).reshape(1, -1, 1, 1))
        k, c = inits[w_name].dims[:2]
        new_nodes.extend(builder.nodes(node, u_name, int(k), int(c), bias_name, f"{node.name or 'conv'}_{i}/{_PREFIX}"))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        _drop_unused_initializers(graph)
    logger.info(f"Winograd F(4x4,3x3): rewrote {count} convolutions with >= {min_channels} input channels")
    return count


def winograd_onnx(src: str, dst: str, min_channels: int = 256) -> str:
    """Write ``dst``: the ONNX model ``src`` with its eligible 3x3 convolutions rewritten.

    The retinakit metadata (if any) is kept and gains ``conv_algorithm`` and
    ``winograd_convs`` (how many were rewritten). A model with no eligible convolution is
    refused (:class:`ValueError`) rather than silently copied.
    """
    onnx = require("onnx", "the Winograd rewrite")
    from .onnx import read_metadata, write_metadata

    if not os.path.isfile(src):
        raise ValueError(f"ONNX model '{src}' does not exist.")
    proto = onnx.load(src)
    meta = read_metadata(proto)
    if meta.get("conv_algorithm") == WINOGRAD_ALGORITHM:
        raise ValueError(f"'{src}' is already a Winograd rewrite; rewrite the plain export instead.")
    count = winograd_rewrite(proto, min_channels)
    if count == 0:
        raise ValueError(
            f"'{src}' has no 3x3 stride-1 padding-1 convolution with constant weights and >= {min_channels} "
            "input channels: nothing to rewrite (lower min_channels, EXPORT.WINOGRAD_MIN_CHANNELS)."
        )
    if meta:
        meta.update(conv_algorithm=WINOGRAD_ALGORITHM, winograd_convs=count)
        write_metadata(proto, meta)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    onnx.save(proto, dst)
    return dst


def _used_names(graph: Any) -> set[str]:
    """Every tensor name read by ``graph``'s nodes, their subgraphs included, or output by it."""
    from onnx import AttributeProto

    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            subgraphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
            for g in subgraphs:
                used |= _used_names(g)
    return used


def _drop_unused_initializers(graph: Any) -> None:
    used = _used_names(graph)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
