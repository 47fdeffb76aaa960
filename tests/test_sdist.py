"""retinakit as a dependency: build an sdist, install it into a fresh virtual environment that
already has torch, and run a small downstream package that registers its own backbone and
builds, trains one step and runs a RetinaNet from Python alone (keyword arguments, no YAML).

The fresh environment gets torch (and the other runtime dependencies) without downloading
anything: a ``.pth`` file appends the site-packages of the interpreter running the tests. pip
installs the sdist with ``--no-build-isolation --no-deps --no-index`` (``--ignore-installed``
so the development checkout is not taken for an installed retinakit); the C++ extension is
compiled from the sdist's sources (``FORCE_CUDA=0``: the CUDA sources are CI's other job).
"""
import json
import math
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap

import pytest

REPO = os.environ.get("RETINAKIT_SDIST_SOURCE", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOWNSTREAM = '''
"""A downstream package: its own backbone, registered in retinakit's registry."""
import torch
from torch import nn

from retinakit.modeling import (
    BACKBONE_REGISTRY, FPN, LOSS_REGISTRY, POSTPROCESSOR_REGISTRY, Backbone, DefaultAnchorGenerator,
    DeltaXYWHBoxCoder, IoUMatcher, RetinaNet, RetinaNetHead,
)


@BACKBONE_REGISTRY.register()
class TinyNet(Backbone):
    """Three stride-2 stages after a stride-4 stem: res3 (8), res4 (16), res5 (32)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.ReLU())
        self.stages = nn.ModuleList()
        self._out_features, self._out_feature_channels, self._out_feature_strides = [], {}, {}
        ch = width
        for i, name in enumerate(["res3", "res4", "res5"]):
            self.stages.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 3, 2, 1), nn.ReLU()))
            ch *= 2
            self._out_features.append(name)
            self._out_feature_channels[name] = ch
            self._out_feature_strides[name] = 8 * 2**i

    def forward(self, x):
        x = self.stem(x)
        out = {}
        for name, stage in zip(self._out_features, self.stages):
            x = stage(x)
            out[name] = x
        return out


def build_detector(num_classes: int = 3) -> RetinaNet:
    backbone = FPN(bottom_up=BACKBONE_REGISTRY.get("TinyNet")(width=8), in_features=["res3", "res4", "res5"],
                   out_channels=32, top_block_in="p5")
    features = ["p3", "p4", "p5", "p6", "p7"]
    strides = [backbone.output_shape()[f].stride for f in features]
    anchors = DefaultAnchorGenerator(strides=strides, sizes=[[16], [32], [64], [128], [256]])
    coder = DeltaXYWHBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    return RetinaNet(
        backbone=backbone,
        head=RetinaNetHead(in_channels=32, num_anchors=anchors.num_anchors[0], num_classes=num_classes, num_convs=2),
        head_in_features=features,
        anchor_generator=anchors,
        box_coder=coder,
        matcher=IoUMatcher(thresholds=(0.4, 0.5), labels=(0, -1, 1)),
        cls_loss=LOSS_REGISTRY.get("sigmoid_focal")(alpha=0.25, gamma=2.0),
        reg_loss=LOSS_REGISTRY.get("smooth_l1")(beta=0.1),
        postprocessor=POSTPROCESSOR_REGISTRY.get("RetinaNetPostProcessor")(box_coder=coder, score_thresh=0.0),
        num_classes=num_classes,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
'''

MAIN = '''
import json, os, sys
import torch
import retinakit
from retinakit.structures import Boxes, Instances
import tinydet

torch.manual_seed(0)
model = tinydet.build_detector(num_classes=3)
image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
gt = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0]])), gt_classes=torch.tensor([1]))
model.train()
losses = model([{"image": image, "instances": gt}])
sum(losses.values()).backward()
torch.optim.SGD(model.parameters(), lr=0.01).step()
model.eval()
with torch.no_grad():
    det = model([{"image": image, "height": 192, "width": 256}])[0]["instances"]
print(json.dumps({
    "retinakit_file": retinakit.__file__,
    "py_typed": os.path.isfile(os.path.join(os.path.dirname(retinakit.__file__), "py.typed")),
    "compiled_ops": hasattr(torch.ops.retinakit, "multiclass_nms"),
    "losses": {k: float(v) for k, v in losses.items()},
    "num_detections": len(det),
    "max_x": float(det.pred_boxes.tensor[:, 2].max()) if len(det) else 0.0,
}))
'''


def _run(cmd, cwd, env=None, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.mark.slow
def test_sdist_installs_and_serves_a_downstream_package(tmp_path):
    # 1. sdist: pure Python sources, py.typed and everything the extension build needs
    dist = tmp_path / "dist"
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=REPO)
    (sdist,) = list(dist.glob("retinakit-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    root = names[0].split("/")[0]
    assert f"{root}/retinakit/py.typed" in names
    assert f"{root}/retinakit/modeling/meta_arch/retinanet.py" in names
    headers = [p for p in _source_files(REPO, "retinakit/_C") if p.endswith((".h", ".cuh", ".cu"))]
    missing = [p for p in headers if f"{root}/{p}" not in names]
    assert not missing, (f"the sdist lacks sources the extension build needs: {missing} "
                         "(MANIFEST.in must include retinakit/_C/**/*.h, *.cuh, *.cu)")

    # 2. a fresh venv that sees this interpreter's packages (torch, ...) through a .pth file
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    vpy = venv / "bin" / "python"
    vsite = _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    with open(os.path.join(vsite, "_outer_site.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")

    # 3. pip install the sdist: no network, no build isolation, no dependency resolution
    env = dict(os.environ, FORCE_CUDA="0", MAX_JOBS=str(max(1, os.cpu_count() or 1)), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    _run([str(vpy), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "--ignore-installed",
          "--no-cache-dir", "-q", str(sdist)], cwd=tmp_path, env=env, timeout=1200)

    # 4. the downstream package, from Python alone
    pkg = tmp_path / "downstream"
    (pkg / "tinydet").mkdir(parents=True)
    (pkg / "tinydet" / "__init__.py").write_text(textwrap.dedent(DOWNSTREAM))
    (pkg / "main.py").write_text(textwrap.dedent(MAIN))
    out = _run([str(vpy), "main.py"], cwd=pkg, env=env)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["retinakit_file"].startswith(vsite), res["retinakit_file"]  # the installed copy, not the checkout
    assert res["py_typed"] and res["compiled_ops"]
    assert set(res["losses"]) == {"loss_cls", "loss_box_reg"}
    assert all(math.isfinite(v) for v in res["losses"].values())
    assert 0 < res["num_detections"] <= 100 and res["max_x"] <= 256


def _source_files(repo, sub):
    out = []
    for dirpath, _, files in os.walk(os.path.join(repo, sub)):
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), repo))
    return sorted(out)
