"""Normalisation layers selected by name: "", "FrozenBN", "BN", "SyncBN", "GN"."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "freeze_batchnorm", "get_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, not parameters).

    State-dict keys are those of ``nn.BatchNorm2d`` (weight, bias, running_mean,
    running_var), so ImageNet checkpoints load directly; ``num_batches_tracked`` is ignored.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]`` -> same shape."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, bn.eps)
        if bn.affine:
            frozen.weight.copy_(bn.weight.detach())
            frozen.bias.copy_(bn.bias.detach())
        if bn.running_mean is not None and bn.running_var is not None:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
        return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm inside ``module`` by a FrozenBatchNorm2d copy."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """A norm layer for ``channels`` channels, or None for ``""``."""
    if not norm:
        return None
    factories = {
        "FrozenBN": lambda c: FrozenBatchNorm2d(c),
        "BN": lambda c: nn.BatchNorm2d(c),
        "SyncBN": lambda c: nn.SyncBatchNorm(c),
        "GN": lambda c: nn.GroupNorm(32, c),
    }
    if norm not in factories:
        raise ValueError(f"Unknown norm '{norm}'; choose one of: '', {', '.join(factories)}.")
    return factories[norm](channels)
