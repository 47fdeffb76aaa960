"""DefaultPredictor: MODEL.WEIGHTS loaded, test-time resize, FrozenBN folded, same detections."""
from __future__ import annotations

import numpy as np
import torch

from retinakit.config import get_cfg
from retinakit.data import build_inference_preprocess
from retinakit.engine import DefaultPredictor
from retinakit.modeling import build_model
from retinakit.modeling.backbone.norm import FrozenBatchNorm2d


def test_default_predictor_matches_the_model(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu",
                         "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 160])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial frozen statistics, so folding is exercised
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights

    predictor = DefaultPredictor(cfg)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in predictor.model.modules())
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    got = predictor(image)["instances"]

    tensor, (h, w) = build_inference_preprocess(cfg)(image, "RGB")
    assert max(tensor.shape[1:]) <= 160 and (h, w) == (120, 200)
    with torch.no_grad():
        ref = model([{"image": tensor, "height": h, "width": w}])[0]["instances"]
    assert got.image_size == (120, 200) and len(got) == len(ref) > 0
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
