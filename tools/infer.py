#!/usr/bin/env python
"""Batched inference with any deployed retinakit model: PyTorch .pth, ONNX, or TensorRT engine.

    python tools/infer.py --model FILE [--config-file CFG] (--images DIR | --video FILE)
        --output detections.json [--visualize DIR] [--annotations JSON] [--batch-size N]
        [--device cpu|cuda] [--score-thresh 0.3]

Writes COCO results JSON (image_id, category_id, bbox [x, y, w, h], score). Image ids and
category ids come from --annotations when given (which also prints COCO AP); otherwise
images are numbered 1, 2, ... in sorted file order and categories are the class index + 1.
A video (--video, any format FFmpeg reads: .mp4, .avi, .mkv, .mov, ...) is decoded frame by
frame with PyAV (pip install retinakit[video]) and run in batches of --batch-size frames;
its detections use the 0-based frame index as image_id. --visualize writes one PNG per image
with the detections drawn, or for a video one annotated video DIR/<video name>_detections.mp4
(H.264, same frame rate; a frame with an odd width or height is padded by one black
pixel row/column). A .pth model needs --config-file; ONNX models and engines carry their
metadata.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from fractions import Fraction
from types import ModuleType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinakit.export import detections
from retinakit.export.detections import Item
from retinakit.utils.errors import EXIT_USER_ERROR, UserInputError, exit_code_on_user_error  # noqa: F401 (EXIT_USER_ERROR: main's exit code, read by callers)

VIDEO_CODECS = ("libx264", "mpeg4")  # first one this FFmpeg build has is used
DEFAULT_FPS = Fraction(25)  # when the input video does not state its frame rate
logger = logging.getLogger("retinakit.infer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".pth (with --config-file), .onnx, .plan or .engine")
    p.add_argument("--config-file", default="", help="config of a .pth checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images")
    src.add_argument("--video", help="video file (.mp4, .avi, .mkv, ...); needs PyAV: pip install retinakit[video]")
    p.add_argument("--output", required=True, help="COCO results JSON to write")
    p.add_argument("--visualize", default="", help="folder for PNGs (images) or the annotated video (--video)")
    p.add_argument("--annotations", default="", help="COCO JSON of the images: ids and COCO evaluation")
    p.add_argument("--batch-size", type=int, default=4, help="images (or video frames) per predictor call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.3, help="minimum score drawn by --visualize")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for a .pth model")
    return p.parse_args(argv)


class UserError(UserInputError):
    """Bad arguments or inputs: one message, exit code 2."""


# ---------------------------------------------------------------------------- inputs
def require_av() -> ModuleType:
    """PyAV, or a :class:`UserError` naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise UserError("Reading videos needs PyAV, which is not installed: pip install retinakit[video]") from None
    return av


def open_video(path: str) -> Any:
    """The PyAV input container of ``path``, checked to hold a video stream."""
    if not os.path.isfile(path):
        raise UserError(f"Video file '{path}' does not exist.")
    av = require_av()
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise UserError(f"Cannot read video '{path}': {e}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"'{path}' has no video stream.")
    return container


def video_frames(container: Any, path: str) -> Iterator[Item]:
    """``(frame index, HWC uint8 RGB array, name)`` of the first video stream, decoded lazily."""
    av = require_av()
    i = 0
    try:
        for i, frame in enumerate(container.decode(video=0)):
            yield i, frame.to_ndarray(format="rgb24"), f"frame_{i:06d}.png"
    except av.FFmpegError as e:
        raise UserError(f"Cannot decode video '{path}' after frame {i}: {e}") from None


def video_rate(container: Any) -> Fraction:
    """Frame rate of the first video stream (``DEFAULT_FPS`` when the file does not say)."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else DEFAULT_FPS


# ---------------------------------------------------------------------------- outputs
coco_rows = detections.coco_rows


def annotate(image: Any, inst: Any, names: list[str] | None, score_thresh: float) -> Any:
    """A PIL image of ``image`` (path or HWC RGB array) with boxes of ``inst`` above ``score_thresh``."""
    import numpy as np
    from PIL import Image, ImageDraw

    from retinakit.data import read_image

    arr = read_image(image, "RGB") if isinstance(image, str) else np.asarray(image)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    for (x0, y0, x1, y1), s, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
        if s < score_thresh:
            continue
        d.rectangle([x0, y0, x1, y1], outline=(255, 64, 0), width=2)
        label = names[c] if names and c < len(names) else str(c)
        d.text((x0 + 2, y0 + 1), f"{label} {s:.2f}", fill=(255, 255, 0))
    return im


def draw(image: Any, inst: Any, names: list[str] | None, score_thresh: float, out_path: str) -> None:
    """Write ``image`` (path or HWC RGB array) with boxes of ``inst`` above ``score_thresh`` as PNG."""
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    annotate(image, inst, names, score_thresh).save(out_path)


class VideoWriter:
    """Writes HWC uint8 RGB frames to a video file (H.264 with libx264, else MPEG-4) at ``rate``.

    The stream is created at the first frame, with that frame's size rounded up to even
    numbers (yuv420p needs them): frames of odd width/height get one black column/row.
    """

    def __init__(self, path: str, rate: Fraction) -> None:
        self.av = require_av()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.rate = path, rate
        self.container = self.av.open(path, mode="w")
        self.stream: Any = None
        self.frames = 0

    def _open_stream(self, height: int, width: int) -> None:
        codec = next((c for c in VIDEO_CODECS if c in self.av.codecs_available), None)
        if codec is None:
            raise UserError(f"This PyAV/FFmpeg build has none of the video encoders {VIDEO_CODECS}.")
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: Any) -> None:
        import numpy as np

        h, w = rgb.shape[:2]
        if self.stream is None:
            self._open_stream(h, w)
        padded = np.zeros((self.stream.height, self.stream.width, 3), dtype=np.uint8)
        padded[:h, :w] = rgb
        frame = self.av.VideoFrame.from_ndarray(padded, format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))
        self.container.close()


# ---------------------------------------------------------------------------- running
predict_items = detections.predict_items
write_results = detections.write_results


def run_images(args: argparse.Namespace, predictor: Any) -> int:
    """Inference on --images: results JSON, PNGs (--visualize), COCO AP (--annotations)."""
    from retinakit.export.verify import coco_ap

    def visit(item: Item, inst: Any) -> None:
        if args.visualize:
            _, src, name = item
            out = os.path.join(args.visualize, os.path.splitext(name)[0] + ".png")
            draw(src, inst, predictor.class_names, args.score_thresh, out)

    rows, all_dets, val = detections.detect_folder(predictor, args.images, args.annotations, args.batch_size, visit)
    write_results(args.output, rows, len(all_dets), "images")
    if val is not None:
        print(f"COCO box AP: {coco_ap(all_dets, val):.2f}")
    return 0


def annotated_video_path(video: str, folder: str) -> str:
    """``folder/<video name>_detections.mp4``: never the input file itself."""
    return os.path.join(folder, os.path.splitext(os.path.basename(video))[0] + "_detections.mp4")


def run_video(args: argparse.Namespace, predictor: Any, container: Any) -> int:
    """Inference on --video frame by frame: results JSON (image_id = frame index), annotated video."""
    import numpy as np

    total = int(container.streams.video[0].frames or 0) or None
    writer = VideoWriter(annotated_video_path(args.video, args.visualize), video_rate(container)) if args.visualize else None
    rows: list[dict[str, Any]] = []
    count = 0

    def visit(item: Item, inst: Any) -> None:
        nonlocal count
        count += 1
        rows.extend(coco_rows(item[0], inst, None))
        if writer is not None:
            writer.write(np.asarray(annotate(item[1], inst, predictor.class_names, args.score_thresh)))

    try:
        predict_items(predictor, video_frames(container, args.video), args.batch_size, total, visit)
    finally:
        if writer is not None:
            writer.close()
    write_results(args.output, rows, count, "video frames")
    if writer is not None:
        print(f"wrote the annotated video ({writer.frames} frames) to {writer.path}")
    return 0


def check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1.")
    if args.video and args.annotations:
        raise UserError("--annotations evaluates a folder of images (--images); it cannot be used with --video.")


def run(args: argparse.Namespace) -> int:
    from retinakit.export import load_predictor

    check_args(args)
    container = open_video(args.video) if args.video else None  # a bad video fails before the model loads
    try:
        predictor = load_predictor(args.model, config_file=args.config_file or None, opts=args.opts, device=args.device)
        return run_video(args, predictor, container) if container is not None else run_images(args, predictor)
    finally:
        if container is not None:
            container.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    return exit_code_on_user_error(run, args)  # user errors: one line, exit 2

if __name__ == "__main__":
    sys.exit(main())
