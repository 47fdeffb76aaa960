"""tools/infer.py --video: per-frame detections equal the predictor run on the decoded frames, the
annotated video has every frame, and missing PyAV / bad videos give one clear message."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch
from test_deploy_helpers import R18, ROOT, assert_clean_error, random_checkpoint, run_tool, tiny_shapes

av = pytest.importorskip("av")

OPTS = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.011"]
NUM_FRAMES = 7
BATCH = 3


def write_test_video(path: str, frames: list[np.ndarray], fps: int = 5) -> str:
    """An H.264 (or MPEG-4) video of ``frames`` written with PyAV directly."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def decode(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: Any) -> tuple[str, str, Any]:
    from PIL import Image

    d = tmp_path_factory.mktemp("infer_video")
    ckpt = random_checkpoint(str(d / "model.pth"))
    _, images = tiny_shapes(str(d), num_images=NUM_FRAMES)
    frames = [np.asarray(Image.open(os.path.join(images, f)).convert("RGB")) for f in sorted(os.listdir(images))]
    return ckpt, write_test_video(str(d / "clip.mp4"), frames), d


def reference_detections(ckpt: str, video: str) -> list[Any]:
    """The predictor run directly on PyAV's decoded frames, in the tool's batches."""
    from retinakit.export import load_predictor

    predictor = load_predictor(ckpt, config_file=R18, opts=OPTS)
    frames = decode(video)
    return [inst for i in range(0, len(frames), BATCH) for inst in predictor(frames[i : i + BATCH])]


def test_video_detections_equal_predictor_on_decoded_frames(setup):
    ckpt, video, d = setup
    out, vis = str(d / "video.json"), str(d / "vis")
    r = run_tool(["tools/infer.py", "--model", ckpt, "--config-file", R18, "--video", video, "--output", out,
                  "--visualize", vis, "--score-thresh", "0.0", "--batch-size", str(BATCH), *OPTS])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"of {NUM_FRAMES} video frames" in r.stdout
    with open(out) as f:
        by_frame: dict[int, list] = defaultdict(list)
        for row in json.load(f):
            by_frame[row["image_id"]].append(row)
    ref = reference_detections(ckpt, video)
    assert len(ref) == NUM_FRAMES
    assert set(by_frame) <= set(range(NUM_FRAMES))
    for i, inst in enumerate(ref):
        rows = by_frame[i]
        assert len(rows) == len(inst) > 0, i
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])
        torch.testing.assert_close(boxes, inst.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), inst.scores, atol=1e-6, rtol=0)
        assert [r["category_id"] for r in rows] == (inst.pred_classes + 1).tolist()


def test_annotated_video_has_every_frame_with_boxes_drawn(setup):
    ckpt, video, d = setup
    vis = d / "vis"
    if not (vis / "clip_detections.mp4").exists():  # made by the test above, unless run alone
        r = run_tool(["tools/infer.py", "--model", ckpt, "--config-file", R18, "--video", video, "--output",
                      str(d / "v.json"), "--visualize", str(vis), "--score-thresh", "0.0", *OPTS])
        assert r.returncode == 0, r.stderr[-2000:]
    annotated, original = decode(str(vis / "clip_detections.mp4")), decode(video)
    assert len(annotated) == len(original) == NUM_FRAMES
    assert all(a.shape == o.shape for a, o in zip(annotated, original))
    # the drawn boxes (orange, score threshold 0: every detection) change many pixels strongly
    changed = [np.mean(np.abs(a.astype(int) - o.astype(int)).max(axis=2) > 80) for a, o in zip(annotated, original)]
    assert min(changed) > 0.1, changed  # re-encoding alone: 0.0


def test_odd_frame_size_is_padded_to_even(tmp_path):
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(ROOT, "tools", "infer.py"))
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    writer = infer.VideoWriter(str(tmp_path / "odd.mp4"), infer.DEFAULT_FPS)
    for k in range(4):
        writer.write(np.full((121, 159, 3), 40 * k, np.uint8))
    writer.close()
    frames = decode(str(tmp_path / "odd.mp4"))
    assert len(frames) == 4 and frames[0].shape == (122, 160, 3)
    assert [round(float(f[:121, :159].mean())) for f in frames] == pytest.approx([0, 40, 80, 120], abs=2)


def test_video_errors_are_one_message(setup, tmp_path):
    ckpt, video, _ = setup
    out = str(tmp_path / "o.json")
    base = ["tools/infer.py", "--model", ckpt, "--config-file", R18, "--output", out]
    assert_clean_error(run_tool([*base, "--video", str(tmp_path / "none.mp4")]), "none.mp4", "does not exist")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    assert_clean_error(run_tool([*base, "--video", str(junk)]), "junk.mp4")
    assert_clean_error(run_tool([*base, "--video", video, "--annotations", "a.json"]), "--annotations", "--video")
    assert not os.path.exists(out)


def test_missing_pyav_names_the_video_extra(setup, tmp_path, monkeypatch, capsys):
    ckpt, video, _ = setup
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(ROOT, "tools", "infer.py"))
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    monkeypatch.setitem(sys.modules, "av", None)  # import fails as if PyAV were not installed
    code = infer.main(["--model", ckpt, "--config-file", R18, "--video", video, "--output", str(tmp_path / "o.json")])
    assert code == infer.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "pip install retinakit[video]" in err and "Traceback" not in err
