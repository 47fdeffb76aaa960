"""Well-conditioned random models and tolerant-but-strict comparisons for model tests.

Random models are badly conditioned by default: deep residual stacks with random norms grow
activations to O(100) (so float rounding differences of oneDNN's AVX2 / AVX-512 kernels and
thread splits reach 1e-4 absolute), and untrained heads give every anchor nearly the same score
(so NMS and the top-k cut decide between near-ties). The helpers here build seeded models whose
activations stay O(1) and whose scores and boxes are spread out, compare tensors relative to
their scale, and compare detections while excusing only the few whose NMS decision is within a
small margin of a threshold.

Imported by the test files of this folder (pytest puts the folder on ``sys.path``); tests in
other folders load it by path.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinakit.modeling.backbone.norm import FrozenBatchNorm2d


# ----------------------------------------------------------------------------- models
def residual_branch_ends(model: nn.Module) -> list[nn.Module]:
    """The last norm of every retinakit residual block (``bn2`` basic, ``bn3`` bottleneck)."""
    from retinakit.modeling.backbone.resnet import BasicBlock, Bottleneck

    return [getattr(m, m.conv_norm_pairs[-1][1]) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@torch.no_grad()
def calibrate_norms_(
    model: nn.Module, run: Callable[[], object], norm_types: tuple[type, ...] = (FrozenBatchNorm2d, nn.BatchNorm2d),
) -> int:
    """Set each norm's running mean/var to the statistics of its input while ``run()`` executes.

    Norms are calibrated in execution order (each sees inputs already normalised by the norms
    before it), so every norm's output is ``weight * N(0, 1) + bias`` per channel. Works for
    ``FrozenBatchNorm2d`` and eval-mode ``nn.BatchNorm2d`` (buffers ``running_mean/var``).
    Returns the number of calibrated norms.
    """
    def hook(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().float()  # [N, C, H, W]
        mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    norms = [m for m in model.modules() if isinstance(m, norm_types)]
    assert not any(m.training for m in norms), "calibrate norms in eval mode (they must use the running statistics)"
    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return len(norms)


@torch.no_grad()
def randomize_norm_affine_(norms: Iterable[nn.Module], g: torch.Generator, damped: Iterable[nn.Module] = (), damping: float = 0.3) -> None:
    """Weights ``U(0.5, 1.5)``, biases ``N(0, 0.1)``; norms in ``damped`` get ``damping`` x weight
    (the end of a residual branch: the sum ``identity + branch`` then grows by ~``damping**2``
    in variance per block instead of doubling)."""
    damped_ids = {id(m) for m in damped}
    for m in norms:
        n = m.weight.numel()
        w = torch.rand(n, generator=g) + 0.5
        m.weight.copy_(w * damping if id(m) in damped_ids else w)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def condition_backbone_(model: nn.Module, run: Callable[[], object], seed: int = 0, damping: float = 0.3) -> None:
    """Seeded batch-norm (frozen or eval-mode) affine parameters, damped residual branches and
    calibrated running statistics (from ``run()``, a forward pass over some input): activations
    stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    randomize_norm_affine_(norms, g, damped=residual_branch_ends(model), damping=damping)
    calibrate_norms_(model, run)
    with torch.no_grad():  # move statistics off the calibration batch (the fold must use them)
        for m in norms:
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.05 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)


@torch.no_grad()
def set_conv_output_spread_(
    conv: nn.Conv2d, run: Callable[[], object], std: float, bias_mean: float, bias_std: float, g: torch.Generator,
) -> float:
    """Rescale ``conv``'s weights so that its output has standard deviation ``std`` over the
    inputs ``run()`` feeds it (all calls, e.g. every FPN level), and set its bias so that each
    output channel's mean is ``N(bias_mean, bias_std)`` (no channel, i.e. no anchor or class,
    dominates the high scores). Returns the scale factor applied to the weights."""
    inputs: list[Tensor] = []
    handle = conv.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    outs = [F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups) for x in inputs]
    flat = torch.cat([o.transpose(0, 1).flatten(1) for o in outs], dim=1)  # [C_out, all positions]
    factor = std / float((flat - flat.mean(dim=1, keepdim=True)).std())
    conv.weight.mul_(factor)
    if conv.bias is not None:
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * bias_std + bias_mean - flat.mean(dim=1) * factor)
    return factor


def condition_heads_(
    cls_conv: nn.Conv2d, box_conv: nn.Conv2d, run: Callable[[], object], seed: int = 0,
    logit_std: float = 1.5, logit_mean: float = -2.5, delta_std: float = 0.15,
) -> None:
    """Spread the detection scores and keep boxes near their anchors: class logits
    ``~N(logit_mean, logit_std)`` over locations (sigmoid scores from ~0.005 to ~0.7, rarely
    tied) and box deltas of standard deviation ``delta_std`` (boxes mostly inside the image)."""
    g = torch.Generator().manual_seed(seed)
    set_conv_output_spread_(cls_conv, run, logit_std, logit_mean, 0.1, g)
    set_conv_output_spread_(box_conv, run, delta_std, 0.0, 0.02, g)


# ----------------------------------------------------------------------------- comparisons
def assert_close_to_scale(actual: Tensor, expected: Tensor, rtol: float = 1e-4, name: str = "") -> None:
    """``|actual - expected| <= rtol * max|expected|`` elementwise: the tolerance is relative to the
    tensor's scale (float rounding of a sum scales with its largest terms, not with each element)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    err = float((actual.float() - expected.float()).abs().max()) if expected.numel() else 0.0
    assert err <= rtol * scale, f"{name}: max abs error {err:.3g} > {rtol:g} x scale {scale:.3g}"


@dataclass
class Detections:
    """One image's detections: ``boxes [D, 4]`` (x1, y1, x2, y2), ``scores [D]``, ``classes [D]``."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor

    @classmethod
    def of(cls, instances) -> Detections:
        """From retinakit ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``)."""
        return cls(instances.pred_boxes.tensor.float(), instances.scores.float(), instances.pred_classes.long())

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class NmsSettings:
    """What decided which candidates became detections (``max_detections`` <= 0: no cut)."""

    score_thresh: float
    nms_thresh: float
    max_detections: int = 100
    class_agnostic: bool = False


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[A, B]`` of ``a [A, 4]`` and ``b [B, 4]`` (independent of retinakit's ops)."""
    wh = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def match_detections(got: Detections, ref: Detections, score_tol: float, box_tol: float) -> tuple[Tensor, Tensor]:
    """Greedy one-to-one matching in decreasing reference score: same class, score within
    ``score_tol``, every coordinate within ``box_tol``. Returns ``(got_matched [G], ref_matched [R])``."""
    got_used = torch.zeros(len(got), dtype=torch.bool)
    ref_used = torch.zeros(len(ref), dtype=torch.bool)
    for i in torch.argsort(ref.scores, descending=True, stable=True).tolist():
        ok = (~got_used & (got.classes == ref.classes[i]) & ((got.scores - ref.scores[i]).abs() <= score_tol)
              & ((got.boxes - ref.boxes[i]).abs() <= box_tol).all(dim=1))
        if ok.any():
            cand = torch.nonzero(ok).flatten()
            j = cand[(got.boxes[cand] - ref.boxes[i]).abs().sum(1).argmin()]
            got_used[j] = ref_used[i] = True
    return got_used, ref_used


def _ambiguous(
    k: int, own: Detections, own_matched: Tensor, other: Detections, other_matched: Tensor,
    nms: NmsSettings, score_margin: float, iou_margin: float,
) -> bool:
    """Whether unmatched detection ``k`` of ``own`` sits within a margin of an NMS decision."""
    s = float(own.scores[k])
    if abs(s - nms.score_thresh) <= score_margin:
        return True  # at the score threshold
    for dets in (own, other):
        if nms.max_detections > 0 and len(dets) >= nms.max_detections and s <= float(dets.scores.min()) + score_margin:
            return True  # at the top-k cut
    box = own.boxes[k:k + 1]
    for dets, matched, is_own in ((own, own_matched, True), (other, other_matched, False)):
        same = torch.ones(len(dets), dtype=torch.bool) if nms.class_agnostic else dets.classes == own.classes[k]
        if is_own:
            same[k] = False
        rival = same & (dets.scores >= s - score_margin)
        if not rival.any():
            continue
        iou = box_iou(box, dets.boxes)[0]
        near_iou = (iou - nms.nms_thresh).abs() <= iou_margin  # suppression decision at the IoU threshold
        overlap = iou > nms.nms_thresh - iou_margin
        near_tie = (dets.scores - s).abs() <= score_margin  # which of two overlapping boxes comes first
        cascade = ~matched  # the rival itself was an ambiguous decision
        if (rival & (near_iou | (overlap & (near_tie | cascade)))).any():
            return True
    return False


def assert_same_detections(
    got: Detections, ref: Detections, nms: NmsSettings, *, score_tol: float = 1e-4, box_rtol: float = 1e-4,
    score_margin: float = 2e-3, iou_margin: float = 0.02, max_excluded: float = 0.05, min_detections: int = 10,
) -> int:
    """``got`` and ``ref`` are the same detections, up to float rounding and NMS near-ties.

    Detections are matched one-to-one (same class, score within ``score_tol``, coordinates within
    ``box_rtol`` x the largest reference coordinate). A detection without a counterpart is
    excused only if its NMS decision could flip under rounding: its score within
    ``score_margin`` of the score threshold or of the top-k cut, or a same-class box of
    higher (or near-tied) score at an IoU within ``iou_margin`` of the NMS threshold, or
    overlapping it beyond the threshold while near-tied in score or itself excused. At most
    ``max_excluded`` of the reference detections (and at least ``min_detections`` reference
    detections overall) are allowed. Returns the number of excused detections.
    """
    assert len(ref) >= min_detections, f"only {len(ref)} reference detections: the test model is too weak"
    scale = float(ref.boxes.abs().max())
    got_m, ref_m = match_detections(got, ref, score_tol, box_rtol * scale)
    excused = 0
    for own, own_m, other, other_m, label in ((got, got_m, ref, ref_m, "result"), (ref, ref_m, got, got_m, "reference")):
        for k in torch.nonzero(~own_m).flatten().tolist():
            assert _ambiguous(k, own, own_m, other, other_m, nms, score_margin, iou_margin), (
                f"{label} detection {k} (class {int(own.classes[k])}, score {float(own.scores[k]):.6f}, "
                f"box {[round(v, 3) for v in own.boxes[k].tolist()]}) has no counterpart and is not an NMS near-tie")
            excused += 1
    limit = max(2, int(max_excluded * len(ref)))
    assert excused <= limit, f"{excused} detections excused as NMS near-ties (at most {limit} allowed of {len(ref)})"
    return excused

