"""retinakit train/infer/export: every ODTK flag sets the config value ODTK's meaning asks for,
ODTK's defaults, ODTK's architecture equals configs/converted/odtk_*.yaml, unsupported flags and
bad input fail before any work with one line, --help and docs/odtk_migration.md show the table."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from retinakit.cli import build_parser, main
from retinakit.cli.docs import render
from retinakit.cli.odtk import FLAGS, UNSUPPORTED, flag_overrides
from retinakit.cli.train import build_cfg
from retinakit.config import get_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TV = "https://download.pytorch.org/models/"
TRAIN = ["train", "out/m.pth", "--annotations", "a.json"]


def _cfg(argv):
    """The config the subcommand builds from ``argv`` (train: build_cfg; infer/export: the flags'
    values on top of the model's config, here the defaults)."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return build_cfg(args)
    cfg = get_cfg()
    cfg.merge_from_list([x for pair in flag_overrides(args.command, args) for x in pair])
    return cfg


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _same(a, b):
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9)
    return a == b


# (argv, {config key: expected value}): what ODTK's flag means, written out by hand.
CASES = [
    ([*TRAIN, "--backbone", "ResNet18FPN"], {"MODEL.RESNETS.DEPTH": 18, "MODEL.WEIGHTS": TV + "resnet18-f37072fd.pth",
                                               "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone"}),
    ([*TRAIN, "--backbone", "ResNet152FPN"], {"MODEL.RESNETS.DEPTH": 152, "MODEL.WEIGHTS": TV + "resnet152-394f9c45.pth"}),
    ([*TRAIN, "--backbone", "ResNeXt50_32x4dFPN"], {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.NUM_GROUPS": 32,
                                                      "MODEL.RESNETS.WIDTH_PER_GROUP": 4}),
    ([*TRAIN, "--backbone", "MobileNetV3SmallFPN"], {"MODEL.BACKBONE.NAME": "build_retinanet_mobilenet_v3_fpn_backbone",
                                                       "MODEL.MOBILENETV3.VARIANT": "small", "MODEL.FPN.TOP_BLOCK_IN": "p5"}),
    ([*TRAIN, "--classes", "2"], {"MODEL.RETINANET.NUM_CLASSES": 2}),
    ([*TRAIN, "--batch", "8"], {"SOLVER.IMS_PER_BATCH": 8}),
    ([*TRAIN, "--resize", "512"], {"INPUT.MIN_SIZE_TEST": 512}),
    ([*TRAIN, "--max-size", "640"], {"INPUT.MAX_SIZE_TRAIN": 640, "INPUT.MAX_SIZE_TEST": 640}),
    ([*TRAIN, "--jitter", "480", "640"], {"INPUT.MIN_SIZE_TRAIN": (480, 640), "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range"}),
    ([*TRAIN, "--iters", "10000"], {"SOLVER.MAX_ITER": 10000}),
    ([*TRAIN, "--milestones", "100", "200"], {"SOLVER.STEPS": (100, 200)}),
    ([*TRAIN, "--iters", "1000", "--milestones", "600", "800", "--schedule", "0.5"], {"SOLVER.MAX_ITER": 500, "SOLVER.STEPS": (300, 400)}),
    ([*TRAIN, "--lr", "0.0005"], {"SOLVER.BASE_LR": 0.0005}),
    ([*TRAIN, "--warmup", "50"], {"SOLVER.WARMUP_ITERS": 50}),
    ([*TRAIN, "--gamma", "0.5"], {"SOLVER.GAMMA": 0.5}),
    ([*TRAIN, "--full-precision"], {"SOLVER.AMP.ENABLED": False}),
    ([*TRAIN, "--images", "imgs"], {"DATASETS.TRAIN_IMAGES": "imgs", "DATASETS.TEST_JSON": ""}),
    ([*TRAIN, "--val-annotations", "v.json", "--images", "imgs"], {"DATASETS.TEST_JSON": "v.json", "DATASETS.TEST_IMAGES": "imgs"}),
    ([*TRAIN, "--val-annotations", "v.json", "--val-images", "vi"], {"DATASETS.TEST_IMAGES": "vi"}),
    ([*TRAIN, "--val-iters", "1000"], {"TEST.EVAL_PERIOD": 1000, "SOLVER.CHECKPOINT_PERIOD": 1000}),
    ([*TRAIN, "--fine-tune", "odtk.pth"], {"MODEL.WEIGHTS": "odtk.pth"}),
    ([*TRAIN, "--logdir", "logs"], {"OUTPUT_DIR": "logs"}),
    ([*TRAIN, "--with-dali"], {"DATALOADER.BACKEND": "dali"}),
    ([*TRAIN, "--augment-brightness", "0.1"], {"INPUT.PHOTOMETRIC.BRIGHTNESS": 0.1, "INPUT.PHOTOMETRIC.ENABLED": True}),
    ([*TRAIN, "--augment-contrast", "0.2"], {"INPUT.PHOTOMETRIC.CONTRAST": 0.2}),
    ([*TRAIN, "--augment-hue", "0.05"], {"INPUT.PHOTOMETRIC.HUE": 0.05}),
    ([*TRAIN, "--augment-saturation", "0.3"], {"INPUT.PHOTOMETRIC.SATURATION": 0.3}),
    ([*TRAIN, "--regularization-l2", "0.001"], {"SOLVER.WEIGHT_DECAY": 0.001, "SOLVER.WEIGHT_DECAY_BIAS": 0.001}),
    ([*TRAIN, "--anchor-ious", "0.3", "0.6"], {"MODEL.RETINANET.IOU_THRESHOLDS": (0.3, 0.6)}),
    ([*TRAIN, "--lr", "0.2", "--opts", "SOLVER.BASE_LR", "0.1", "SOLVER.MAX_TO_KEEP", "3"],
     {"SOLVER.BASE_LR": 0.1, "SOLVER.MAX_TO_KEEP": 3}),
    (["infer", "m.pth", "--resize", "640"], {"INPUT.MIN_SIZE_TEST": 640}),
    (["infer", "m.pth", "--max-size", "700"], {"INPUT.MAX_SIZE_TEST": 700}),
    (["export", "m.pth", "e.onnx", "--size", "512"], {"EXPORT.EXAMPLE_SIZE": (512, 512)}),
    (["export", "m.pth", "e.onnx", "--size", "384", "640"], {"EXPORT.EXAMPLE_SIZE": (384, 640)}),
    (["export", "m.pth", "e.plan", "--dynamic-batch-opts", "1", "4", "8"], {"EXPORT.TENSORRT.BATCH": (1, 4, 8)}),
    (["export", "m.pth", "e.plan", "--calibration-batches", "3"], {"EXPORT.INT8.NUM_IMAGES": 24}),
    (["export", "m.pth", "e.plan", "--calibration-batches", "3", "--dynamic-batch-opts", "1", "2", "4"], {"EXPORT.INT8.NUM_IMAGES": 6}),
    (["export", "m.pth", "e.onnx", "--opset", "17"], {"EXPORT.OPSET": 17}),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a[:1] + a[4 if a[0] == "train" else 2:]) for a, _ in CASES])
def test_flag_sets_config(argv, expected):
    cfg = _cfg(argv)
    for key, value in expected.items():
        assert _same(_get(cfg, key), value), f"{key}: {_get(cfg, key)!r} != {value!r}"


def test_every_config_flag_is_covered_by_a_case():
    used = {(a[0], t) for a, _ in CASES for t in a if t.startswith("--")}
    mapped = {(f.command, f.name) for f in FLAGS if f.to_config is not None}
    assert mapped - used == set()


def test_odtk_defaults():
    cfg = _cfg(TRAIN)
    expected = {
        "MODEL.RESNETS.DEPTH": 50, "MODEL.WEIGHTS": TV + "resnet50-0676ba61.pth", "MODEL.RETINANET.NUM_CLASSES": 80,
        "SOLVER.IMS_PER_BATCH": 2 * max(1, torch.cuda.device_count()), "INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TRAIN": 1333,
        "INPUT.MAX_SIZE_TEST": 1333, "INPUT.MIN_SIZE_TRAIN": (640, 1024), "SOLVER.MAX_ITER": 90000, "SOLVER.STEPS": (60000, 80000),
        "SOLVER.BASE_LR": 0.01, "SOLVER.WARMUP_ITERS": 1000, "SOLVER.WARMUP_FACTOR": 0.1, "SOLVER.GAMMA": 0.1,
        "SOLVER.AMP.ENABLED": True, "DATASETS.TRAIN_IMAGES": ".", "DATASETS.TRAIN_JSON": "a.json", "DATASETS.TRAIN": (),
        "TEST.EVAL_PERIOD": 8000, "OUTPUT_DIR": os.path.join("out", "m_logs"), "DATALOADER.BACKEND": "torch",
        "INPUT.PHOTOMETRIC.ENABLED": True, "INPUT.PHOTOMETRIC.BRIGHTNESS": 0.002, "INPUT.PHOTOMETRIC.CONTRAST": 0.002,
        "INPUT.PHOTOMETRIC.HUE": 0.0002, "INPUT.PHOTOMETRIC.SATURATION": 0.002, "SOLVER.WEIGHT_DECAY": 0.0001,
        "MODEL.RETINANET.IOU_THRESHOLDS": (0.4, 0.5), "SOLVER.MOMENTUM": 0.9,
    }
    for key, value in expected.items():
        assert _same(_get(cfg, key), value), f"{key}: {_get(cfg, key)!r} != {value!r}"


@pytest.mark.parametrize("depth", [18, 50])
def test_odtk_architecture_is_the_converted_config(depth):
    """The model the command trains is the one configs/converted/odtk_retinanet_R_*_FPN.yaml describes."""
    ref = get_cfg()
    ref.merge_from_file(os.path.join(REPO, "configs", "converted", f"odtk_retinanet_R_{depth}_FPN.yaml"))
    cfg = _cfg([*TRAIN, "--backbone", f"ResNet{depth}FPN"])

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    for key, value in leaves(ref.MODEL, "MODEL."):
        if key != "MODEL.WEIGHTS":
            assert _same(_get(cfg, key), value), f"{key}: {_get(cfg, key)!r} != converted config's {value!r}"
    for key in ("INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "TEST.DETECTIONS_PER_IMAGE"):
        assert _same(_get(cfg, key), _get(ref, key)), key


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED))
def test_unsupported_flags_fail_first_with_one_line(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # before any work: even with the required arguments missing and a model that does not exist
    assert main(["train", "model.pth", flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "not supported" in err
    assert os.listdir(tmp_path) == []


def test_with_apex_says_native_amp_is_the_default(capsys):
    assert main(["train", "m.pth", "--annotations", "a.json", "--with-apex"]) == 2
    assert "native AMP" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    ([*TRAIN, "--backbone", "ResNet9000FPN"], "--backbone ResNet9000FPN is not available"),
    ([*TRAIN, "--backbone", "ResNet18FPN", "ResNet50FPN"], "one backbone per model"),
    ([*TRAIN, "--opts", "SOLVER.BASE_LR"], "KEY VALUE pairs"),
    ([*TRAIN, "--val-images", "v"], "--val-images needs --val-annotations"),
    ([*TRAIN], "--annotations a.json: no such file"),
    (["train", "m.pth", "--annotations", os.path.join(REPO, "setup.py"), "--images", "nowhere"], "--images nowhere: no such folder"),
    (["train", "m.pth", "--annotations", os.path.join(REPO, "setup.py"), "--images", REPO, "--fine-tune", "odtk.pth"],
     "--fine-tune odtk.pth: no such file"),
    (["export", "m.pth", "out.trt"], "must end in .onnx"),
    (["infer", "m.onnx", "--opts", "MODEL.DEVICE", "cpu"], "--opts/--config-file apply to .pth models"),
    (["infer", "m.pth", "--batch", "0"], "--batch must be >= 1"),
    (["export", "m.pth", "out.plan", "--int8"], "--int8 needs --calibration-images"),
    (["infer", "missing.pth"], "does not exist"),
])
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_engine_export_without_tensorrt_names_the_extra(tmp_path, capsys, monkeypatch):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    assert main(["export", "m.pth", "engine.plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install retinakit[tensorrt]" in err
    assert os.listdir(tmp_path) == []  # before any work


def test_retinakit_checkpoint_without_config_names_the_fix(tmp_path, capsys):
    torch.save({"model": {"head.cls_score.weight": torch.zeros(9, 1, 1, 1)}}, tmp_path / "m.pth")
    assert main(["infer", str(tmp_path / "m.pth"), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "m.yaml" in err and "--config-file" in err


@pytest.mark.parametrize("command", ["train", "infer", "export"])
def test_help_shows_flag_and_config_key(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for f in FLAGS:
        if f.command == command:
            assert f.name in text and re.sub(r"\s+", " ", f.target) in text, f.name


def test_docs_table_is_generated_from_the_mapping():
    path = os.path.join(REPO, "docs", "odtk_migration.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert render(text) == text, "docs/odtk_migration.md is out of date: run python -m retinakit.cli.docs"
    for f in FLAGS:
        assert f"| `{f.name}` |" in text


def test_console_command_is_declared_and_runs():
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        assert '"retinakit = retinakit.cli:main"' in f.read()
    r = subprocess.run([sys.executable, "-m", "retinakit.cli", "export", "m.pth", "m.onnx", "--rotated-bbox"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --rotated-bbox is not supported")


def test_resume_rules(tmp_path, capsys):
    """ODTK resumes when MODEL exists: from OUTPUT_DIR's last checkpoint, else from MODEL's
    weights with a notice; --override starts over."""
    from retinakit.cli.train import decide_resume

    model = str(tmp_path / "m.pth")
    argv = ["train", model, "--annotations", "a.json"]
    args = build_parser().parse_args(argv)
    assert decide_resume(build_cfg(args), args) is False  # MODEL missing: a new training
    torch.save({}, model)
    cfg = build_cfg(args)
    assert decide_resume(cfg, args) is False and cfg.MODEL.WEIGHTS == model
    out = capsys.readouterr().out
    assert out.startswith("notice: ") and "starts from its weights at iteration 0" in out and len(out.splitlines()) == 1
    os.makedirs(tmp_path / "m_logs")
    (tmp_path / "m_logs" / "last_checkpoint").write_text("model_0000009.pth")
    assert decide_resume(build_cfg(args), args) is True
    args = build_parser().parse_args([*argv, "--override"])
    assert decide_resume(build_cfg(args), args) is False
