"""Training on a GPU with the real model (``-m cuda``; part of ``make gpu-check``): AMP fp16 with
its GradScaler through DefaultTrainer, and one DDP step over NCCL on one GPU. The DDP step also
runs here over gloo on CPU, so its code is proven before a GPU runs it."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist

from retinakit.config import get_cfg
from retinakit.data.datasets import ShapesSpec, generate_shapes
from retinakit.engine import AMPTrainer, DefaultTrainer
from retinakit.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # CUSTOM_IMPORTS names projects.ResNet10.resnet10
    sys.path.insert(0, REPO)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    return generate_shapes("tiny", ShapesSpec(num_images=8, image_size=160, seed=5), root=str(tmp_path_factory.mktemp("shapes")))


def _cfg(shapes: str, out: str, device: str, *opts: object) -> object:
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATASETS.TRAIN_JSON", os.path.join(shapes, "annotations.json"),
        "DATASETS.TRAIN_IMAGES", os.path.join(shapes, "images"), "MODEL.DEVICE", device, "SEED", "3",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "0", "OUTPUT_DIR", out, *opts,
    ])
    return cfg


def _losses(trainer: DefaultTrainer) -> list[float]:
    return [v for v, _ in trainer.storage.history("total_loss").values]


@pytest.mark.cuda
@cuda
def test_amp_fp16_with_grad_scaler_trains_like_fp32(shapes, tmp_path):
    runs = {}
    for name, amp in (("fp32", []), ("fp16", ["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "float16"])):
        trainer = DefaultTrainer(_cfg(shapes, str(tmp_path / name), "cuda", *amp))
        before = copy.deepcopy(trainer.model.state_dict())
        trainer.resume_or_load(resume=False)
        trainer.train()
        runs[name] = (trainer, before)
    amp_trainer, before = runs["fp16"]
    step = amp_trainer._trainer
    assert isinstance(step, AMPTrainer) and step.dtype == torch.float16 and step.grad_scaler is not None
    scale = step.grad_scaler.get_scale()
    assert 0 < scale < float("inf") and step.grad_scaler.is_enabled()
    fp16, fp32 = _losses(amp_trainer), _losses(runs["fp32"][0])
    assert len(fp16) == len(fp32) == 4 and all(torch.isfinite(torch.tensor(fp16)))
    # Same weights and data: the first loss differs only by fp16 rounding of activations.
    assert abs(fp16[0] - fp32[0]) <= 0.02 * abs(fp32[0])
    after = amp_trainer.model.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert changed, "no weight changed: the scaler skipped every step"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def _ddp_grads_match_plain(shapes: str, out: str, device: str, backend: str) -> None:
    """One forward/backward of the real RetinaNet under DistributedDataParallel (world size 1)
    gives the gradients of the plain model on the same batch."""
    cfg = _cfg(shapes, out, device)
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    wrapped_model = copy.deepcopy(plain)
    batch = next(iter(DefaultTrainer.build_train_loader(cfg)))
    store = dist.HashStore()
    dist.init_process_group(backend, store=store, world_size=1, rank=0)
    try:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(wrapped_model, device_ids=[torch.device(device).index or 0] if device == "cuda" else None)
        for model in (plain, ddp):
            sum(model(batch).values()).backward()
        for (name, a), b in zip(plain.named_parameters(), wrapped_model.parameters()):
            assert (a.grad is None) == (b.grad is None), name
            if a.grad is not None:
                scale = a.grad.abs().max().item() + 1e-12
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@cuda
@pytest.mark.skipif(not dist.is_nccl_available(), reason="torch built without NCCL")
def test_one_gpu_nccl_ddp_step(shapes, tmp_path):
    _ddp_grads_match_plain(shapes, str(tmp_path), "cuda", "nccl")


def test_one_process_gloo_ddp_step(shapes, tmp_path):
    _ddp_grads_match_plain(shapes, str(tmp_path), "cpu", "gloo")
