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
