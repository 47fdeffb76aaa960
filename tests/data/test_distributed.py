"""Two real gloo processes: per-rank train shards of one permutation, test shards without overlap.

The processes are forked from the test process, after the DALI tests ran in it: this also
checks that finished or failed DALI loaders leave no threads behind (a fork with DALI's
threads still alive deadlocks, as DataLoader workers would)."""
import itertools
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from retinakit.config import get_cfg
from retinakit.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from retinakit.data.dali import dali_available

from .helpers import make_coco


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, js, root, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = get_cfg()
        cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES = js, root
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (16,), 16
        cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
        cfg.DATALOADER.ASPECT_RATIO_GROUPING, cfg.SEED = False, -1  # seed drawn on rank 0, broadcast
        train = [d["image_id"] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 7) for d in b]
        test = [d["image_id"] for b in build_detection_test_loader(cfg, "cfg_train") for d in b]
        out = {"train": train, "test": test}
        if dali_available():  # the DALI test loader shards as the torch one (CPU operators)
            cfg.DATALOADER.BACKEND, cfg.DATALOADER.DALI.DEVICE = "dali", "cpu"
            out["dali_test"] = [d["image_id"] for b in build_detection_test_loader(cfg, "cfg_train", batch_size=3) for d in b]
            # ON_BAD_IMAGE skip: the ranks split the file check and drop the same (truncated) image
            cfg.DATALOADER.ON_BAD_IMAGE = "skip"
            bad = {"file_name": os.path.join(root, "cut.png"), "image_id": 999, "height": 20, "width": 20, "annotations": []}
            loader = build_detection_train_loader(cfg, dataset=[*get_detection_dataset_dicts("cfg_train"), bad])
            out["dali_skipped"] = loader.skipped
            out["dali_train"] = [d["image_id"] for b in itertools.islice(iter(loader), 7) for d in b]
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks(tmp_path):
    js = make_coco(str(tmp_path), sizes=[(20, 20)] * 7)
    data = (tmp_path / "img" / "im0.png").read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    mp.start_processes(_worker, args=(js, str(tmp_path / "img"), _port(), str(tmp_path)), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert len(r0["train"]) == len(r1["train"]) == 7
    # one permutation per epoch (same broadcast seed), dealt out alternately: rank 0 takes
    # positions 0, 2, 4, 6 and rank 1 positions 1, 3, 5 of the first epoch
    assert sorted(r0["train"][:4] + r1["train"][:3]) == list(range(100, 107))
    assert sorted(r0["test"] + r1["test"]) == list(range(100, 107)) and len(r0["test"]) == 4
    if dali_available():
        assert r0["dali_test"] == r0["test"] and r1["dali_test"] == r1["test"]
        assert r0["dali_skipped"] == r1["dali_skipped"] == 1
        assert sorted(set(r0["dali_train"] + r1["dali_train"])) == list(range(100, 107))
