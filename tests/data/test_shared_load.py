"""Two gloo ranks: rank 0 validates once, both ranks get the same records; errors reach every rank."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from retinakit.config import get_cfg
from retinakit.data import coco as coco_mod
from retinakit.data.build import _dicts_from_cfg, register_datasets_from_cfg

from .helpers import make_coco


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, js, root, cache, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    calls = []
    real = coco_mod._validate

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    coco_mod._validate = counted
    try:
        cfg = get_cfg()
        cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES, cfg.DATASETS.CACHE_DIR = js, root, cache
        names = register_datasets_from_cfg(cfg)[0]
        first = list(_dicts_from_cfg(cfg, names, False))
        second = list(_dicts_from_cfg(cfg, names, True))  # from the cache on rank 0
        from retinakit.data import MetadataCatalog

        classes = MetadataCatalog.get("cfg_train").__dict__.get("thing_classes")
        validations = len(calls)
        cfg.DATASETS.TRAIN_JSON = js + ".missing"
        names = register_datasets_from_cfg(cfg)[0]
        try:
            _dicts_from_cfg(cfg, names, False)
            error = None
        except Exception as e:  # noqa: BLE001 - the test looks at what each rank raised
            error = (type(e).__name__, str(e))
        torch.save({"calls": validations, "first": first, "second": second, "classes": classes, "error": error},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        coco_mod._validate = real
        dist.destroy_process_group()


def test_two_ranks_one_validation(tmp_path):
    js = make_coco(str(tmp_path), sizes=[(20, 20), (24, 30), (30, 24)])
    cache = str(tmp_path / "cache")
    args = (js, str(tmp_path / "img"), cache, _port(), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2))
    assert (r0["calls"], r1["calls"]) == (1, 0)  # rank 0 validated once; the second load was a cache hit
    assert r0["first"] == r1["first"] and len(r0["first"]) == 3
    assert r0["second"] == r1["second"] == r0["first"]  # filter_empty keeps all three (each has boxes)
    assert r0["classes"] == r1["classes"] == ["c3", "c7", "c11"]
    assert len(os.listdir(cache)) == 1
    assert r0["error"][0] == r1["error"][0] == "DatasetError" and "does not exist" in r1["error"][1]
