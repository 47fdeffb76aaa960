"""Fixtures of the export tests: quickstart-architecture models, their ONNX exports, images."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "retinanet_R18_shapes.yaml")
# An untrained head predicts ~0.01 everywhere (PRIOR_PROB): with this threshold every image
# yields many candidates and the full 100 detections, which exercises top-k and NMS hard.
RANDOM_MODEL_SCORE_THRESH = 0.011


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
