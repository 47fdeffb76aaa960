"""The README's "use retinakit as a library" example runs as written (fresh interpreter)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_library_example_runs():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    example = next(b for b in blocks if "BACKBONE_REGISTRY.register" in b)
    code = example + "\nassert len(instances) <= 100 and instances.pred_boxes.tensor.shape[1] == 4\nprint('ok')\n"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_getting_started_dataset_config_is_valid(tmp_path):
    """The `configs/mydata.yaml` of docs/getting_started.md merges (keys and types are right)."""
    from retinakit.config import get_cfg

    with open(os.path.join(REPO, "docs", "getting_started.md"), encoding="utf-8") as f:
        text = f.read()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL) if "TRAIN_JSON" in b)
    base = os.path.join(REPO, "configs", "COCO-Detection", "retinanet_R_50_FPN_1x.yaml")
    path = tmp_path / "mydata.yaml"
    path.write_text(block.replace('"COCO-Detection/retinanet_R_50_FPN_1x.yaml"', f'"{base}"'))
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.DATASETS.TRAIN == () and cfg.DATASETS.TRAIN_JSON.endswith("train.json")
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 3 and cfg.SOLVER.STEPS == (14000, 18000)
