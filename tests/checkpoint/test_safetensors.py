"""Model weights saved as .safetensors load back identically (MODEL.WEIGHTS, load_model_weights, the
predictor), keep converted-weights metadata, come out of tools/convert_weights.py by extension,
and a missing ``safetensors`` package gives one clear message."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np
import pytest
import torch

from retinakit.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    MissingSafetensorsError,
    load_checkpoint_file,
    load_model_weights,
    save_model_weights,
    save_safetensors,
)
from retinakit.config import get_cfg
from retinakit.modeling import build_model

safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(fmt: str = "RGB") -> Any:
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.RETINANET.NUM_CLASSES", 3, "INPUT.FORMAT", fmt, "INPUT.MIN_SIZE_TEST", 128,
                         "INPUT.MAX_SIZE_TEST", 160, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0])
    return cfg


def _model(seed: int, fmt: str = "RGB") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(_cfg(fmt)).eval()
    with torch.no_grad():  # also move the (frozen) BN statistics and affine away from their defaults
        for name, t in model.state_dict().items():
            if (".bn" not in name and "norm" not in name) or not t.is_floating_point():
                continue
            t.uniform_(0.5, 1.5) if name.endswith(("weight", "running_var")) else t.normal_(0, 0.1)
    return model


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)


@torch.inference_mode()
def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    img = torch.from_numpy(_image()).permute(2, 0, 1).contiguous()
    inst = model([{"image": img, "height": 120, "width": 150}])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    out_a, out_b = _outputs(a), _outputs(b)
    assert len(out_a[1]) > 0
    for x, y in zip(out_a, out_b):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: Any) -> tuple[torch.nn.Module, str]:
    model = _model(seed=1)
    path = str(tmp_path_factory.mktemp("st") / "weights.safetensors")
    # a full training checkpoint dict: only its model weights go into the file
    ckpt = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "iteration": 7}
    save_model_weights(ckpt, path)
    return model, path


def test_file_holds_the_model_weights_only(saved):
    model, path = saved
    # read back by the safetensors package itself, not by retinakit
    _assert_same_state(safetensors_torch.load_file(path), model.state_dict())


def test_round_trip_through_model_weights(saved):
    model, path = saved
    cfg = _cfg()
    cfg.MODEL.WEIGHTS = path
    torch.manual_seed(2)
    other = build_model(cfg).eval()
    assert not torch.equal(other.head.cls_score.weight, model.head.cls_score.weight)
    Checkpointer(other, save_to_disk=False).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    _assert_same_state(other.state_dict(), model.state_dict())
    _assert_same_outputs(other, model)


def test_round_trip_through_load_model_weights(saved):
    model, path = saved
    torch.manual_seed(3)
    other = build_model(_cfg()).eval()
    report = load_model_weights(other, load_checkpoint_file(path), source=path)
    assert report.missing == [] and report.skipped_class_specific == [] and report.converted_from == ""
    _assert_same_state(other.state_dict(), model.state_dict())
    _assert_same_outputs(other, model)


def test_predictor_gives_the_same_detections_as_the_pth(saved, tmp_path):
    from retinakit.export import load_predictor

    model, path = saved
    pth = save_model_weights(model, str(tmp_path / "weights.pth"))
    assert torch.load(pth, weights_only=True).keys() == {"model"}
    a = load_predictor(path, cfg=_cfg())(_image())[0]
    b = load_predictor(pth, cfg=_cfg())(_image())[0]
    assert len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_converted_weights_metadata_survives(tmp_path):
    model = _model(seed=4, fmt="BGR")
    info = {"source": "detectron2", "config": "OUT.yaml", "requires": {"INPUT.FORMAT": "BGR"}}
    path = save_safetensors(model, str(tmp_path / "d2.safetensors"), info)
    ckpt = load_checkpoint_file(path)
    assert ckpt["__retinakit__"] == info
    with pytest.raises(CheckpointMismatchError, match=r"(?s)INPUT\.FORMAT: config has 'RGB'.*detectron2"):
        load_model_weights(build_model(_cfg("RGB")), ckpt, source=path, cfg=_cfg("RGB"))
    assert load_model_weights(build_model(_cfg("BGR")), ckpt, source=path, cfg=_cfg("BGR")).missing == []


def _convert_tool() -> Any:
    spec = importlib.util.spec_from_file_location("convert_weights", os.path.join(REPO, "tools", "convert_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_convert_weights_writes_safetensors_by_extension(tmp_path, capsys):
    model = _model(seed=5)
    src = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "iteration": 9}, src)
    out = tmp_path / "out" / "model_final.safetensors"
    assert _convert_tool().main(["--source", "retinakit", str(src), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    _assert_same_state(safetensors_torch.load_file(str(out)), model.state_dict())
    back = tmp_path / "back.pth"  # and a .safetensors input converts back to .pth
    assert _convert_tool().main(["--source", "retinakit", str(out), str(back)]) == 0
    _assert_same_state(torch.load(back, weights_only=True)["model"], model.state_dict())


def test_missing_safetensors_package_gives_one_clear_message(saved, tmp_path, monkeypatch):
    model, path = saved
    for name in ("safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(MissingSafetensorsError, match=r"weights\.safetensors.*pip install safetensors"):
        load_checkpoint_file(path)
    target = str(tmp_path / "new.safetensors")
    with pytest.raises(MissingSafetensorsError, match=r"new\.safetensors.*pip install safetensors"):
        save_model_weights(model, target)
    assert not os.path.exists(target)
    save_model_weights(model, str(tmp_path / "still.pth"))  # .pth needs no safetensors
    with pytest.raises(SystemExit, match=r"^error: .*pip install safetensors"):
        _convert_tool().main(["--source", "retinakit", str(tmp_path / "still.pth"), target])
    with pytest.raises(SystemExit, match=r"^error: .*pip install safetensors"):
        _convert_tool().main(["--source", "retinakit", path, str(tmp_path / "x.pth")])
