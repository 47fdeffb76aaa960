"""Fixtures of the export tests: quickstart-architecture models, their ONNX exports, images."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "retinanet_R18_shapes.yaml")
# The random model is well-conditioned (tests/modeling/rk_model_testutils.py): O(1) features,
# class logits spread over locations, small box deltas. An untrained head would give every
# anchor ~0.01 (PRIOR_PROB), i.e. near-tied scores that float rounding reorders.
RANDOM_MODEL_SCORE_THRESH = 0.05


def model_testutils():
    """tests/modeling/rk_model_testutils.py (conditioned models, NMS-aware detection matching)."""
    name = "rk_model_testutils"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tests", "modeling", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def condition_random_model_(model, seed: int = 0) -> None:
    """Calibrated norms with damped residual branches, spread scores (many detections above
    ``RANDOM_MODEL_SCORE_THRESH``), boxes near their anchors."""
    tu = model_testutils()
    batch = [{"image": im} for im in random_images([(160, 160)] * 2, seed=seed + 100)]
    with torch.no_grad():
        images = model.preprocess_image(batch)
        tu.condition_backbone_(model.backbone, lambda: model.backbone(images.tensor), seed=seed)
        tu.condition_heads_(model.head.cls_score, model.head.bbox_pred, lambda: model.inference_outputs(images), seed=seed,
                            logit_std=1.0, logit_mean=-5.0)


def quickstart_cfg(*opts):
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def random_images(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


@pytest.fixture(scope="session")
def random_setup():
    """``(cfg, model)``: the quickstart architecture with seeded random weights (eval mode)."""
    from retinakit.modeling import build_model

    cfg = quickstart_cfg("MODEL.RETINANET.SCORE_THRESH_TEST", RANDOM_MODEL_SCORE_THRESH)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    condition_random_model_(model)
    return cfg, model


@pytest.fixture(scope="session")
def random_weights(random_setup, tmp_path_factory):
    """The random model saved as a retinakit checkpoint (``{"model": state_dict}``)."""
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save({"model": random_setup[1].state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def e2e_onnx(random_setup, tmp_path_factory):
    """End-to-end ONNX export of the random model (with deployment metadata)."""
    from retinakit.export import export_onnx, model_metadata

    cfg, model = random_setup
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    export_onnx(model, path, mode="e2e", example_size=(2, 160, 160), metadata=model_metadata(cfg, model))
    return path


@pytest.fixture(scope="session")
def heads_onnx(random_setup, tmp_path_factory):
    from retinakit.export import export_onnx, model_metadata

    cfg, model = random_setup
    path = str(tmp_path_factory.mktemp("onnx_heads") / "heads.onnx")
    export_onnx(model, path, mode="heads", example_size=(1, 160, 160), metadata=model_metadata(cfg, model))
    return path


@pytest.fixture(scope="session")
def calibration_data():
    """Inputs of the exported graph for 8 shapes-like images (random content, 160 px)."""
    import numpy as np

    from retinakit.export.calibration import pad_batch

    images, sizes = pad_batch(random_images([(160, 160)] * 6 + [(128, 160), (160, 96)], seed=5), 32)
    return {"images": images.astype(np.float32), "image_sizes": sizes}


def ort_run(path, images, sizes):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": images, "image_sizes": sizes})
