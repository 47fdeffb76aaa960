"""DDP with 2 gloo processes on CPU equals 1 process with the same global batch."""
from __future__ import annotations

from pathlib import Path

import torch
from _engine_ddp import train_and_save

from retinakit.engine import launch


def test_two_gloo_processes_match_one_process(tmp_path):
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    launch(train_and_save, 1, args=(str(tmp_path / "o1"), one))
    launch(train_and_save, 2, dist_url="auto", args=(str(tmp_path / "o2"), two))
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert (a["world"], b["world"]) == (1, 2)
    assert len(a["losses"]) == len(b["losses"]) == 6
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-4, atol=1e-5)
    for k in a["params"]:
        torch.testing.assert_close(a["params"][k], b["params"][k], rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(a["params"]["conv.weight"], torch.zeros_like(a["params"]["conv.weight"]))


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    from _engine_ddp import train_until_nan

    prefix = str(tmp_path / "msg")
    launch(train_until_nan, 2, dist_url="auto", args=(str(tmp_path / "o"), prefix))
    m0, m1 = Path(prefix + ".0").read_text(), Path(prefix + ".1").read_text()
    assert "iteration 2" in m0 and "iteration 2" in m1
    assert "another rank" in m0 and "non-finite here" in m1
    assert "[20, 21, 22, 23]" in m1  # rank 1 of 2, 4 images each: iteration 2 starts at (2 * 2 + 1) * 4


def test_teardown_keeps_no_reference_to_a_destroyed_group():
    """launch's teardown drops comm's references to the groups before destroying them. A group kept
    alive past destroy_process_group (comm's per-machine group, the cached CPU group) was torn down
    at interpreter exit with its gloo threads running: a rank died with SIGABRT after finishing its
    work in about one 2-process launch in five (tests/evaluation/test_coco_evaluator.py)."""
    import importlib
    from datetime import timedelta

    import torch.distributed as dist

    from retinakit.utils import comm

    launch_mod = importlib.import_module("retinakit.engine.launch")  # the module, not the function

    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    url = f"{launch_mod._PARENT_STORE_SCHEME}127.0.0.1:{store.port}"
    launch_mod._init_group("gloo", url, 1, 0, 0, 1, 1, timedelta(seconds=60))
    try:
        assert comm._LOCAL_PROCESS_GROUP is not None and comm.get_local_size() == 1
        assert comm._cpu_group() is None  # gloo: the default group, by None (no reference held)
    finally:
        launch_mod._destroy()
    assert not dist.is_initialized()
    assert comm._LOCAL_PROCESS_GROUP is None and comm._cpu_group.cache_info().currsize == 0
