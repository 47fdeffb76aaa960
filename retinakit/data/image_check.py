"""Check the image files of dataset dicts before a pipeline reads them (``ON_BAD_IMAGE skip``).

The torch loaders skip a bad image when they decode it; a DALI pipeline cannot (an
undecodable file fails its whole batch), so its loaders check the files first with
:func:`retinakit.data.image_io.verify_image` and drop the bad ones.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch.distributed as dist

from .errors import BadImageError, ProblemLog
from .image_io import size_mismatch, verify_image
from .samplers import world_info

__all__ = ["drop_bad_images", "find_bad_images", "image_problem", "report_bad_images"]

Problem = tuple[str, str]  # (kind, message)


def _context(d: dict[str, Any]) -> str:
    return f"image id {d.get('image_id')}"


def _size_problem(d: dict[str, Any], h: int, w: int) -> Problem | None:
    msg = size_mismatch(d["file_name"], _context(d), (h, w), (d.get("height"), d.get("width")))
    return ("size disagrees with file", msg) if msg else None


def _format_problem(d: dict[str, Any], fmt: str, formats: Collection[str]) -> Problem | None:
    if fmt in formats:
        return None
    return "unsupported image format", (
        f"Image {d['file_name']} ({_context(d)}) is a {fmt} file, which the pipeline cannot decode "
        f"(it reads {', '.join(sorted(formats))}). Convert the file, or use DATALOADER.BACKEND torch"
    )


def image_problem(d: dict[str, Any], formats: Collection[str] | None = None) -> Problem | None:
    """``(kind, message)`` of what is wrong with the image file of dataset dict ``d``, or None.

    Checks (:func:`verify_image`): the file exists and has an image header, it is complete
    (not truncated), its size after EXIF orientation is the dict's ``height``/``width``
    (when given), and its PIL format is one of ``formats`` (when given).
    """
    try:
        header = verify_image(d["file_name"], _context(d))
    except BadImageError as e:
        return e.kind, str(e)
    return _size_problem(d, header.height, header.width) or (
        _format_problem(d, header.format, formats) if formats is not None else None
    )


def find_bad_images(
    dataset: Sequence[dict[str, Any]], positions: Sequence[int] | None = None, formats: Collection[str] | None = None
) -> list[tuple[int, str, str]]:
    """``(position, kind, message)`` of every bad image among ``dataset[positions]`` (default:
    all), in position order. Files are checked in threads (file reads and CRCs release the GIL)."""
    positions = range(len(dataset)) if positions is None else positions

    def check(i: int) -> tuple[int, Problem | None]:
        return i, image_problem(dataset[i], formats)

    workers = min(16, (os.cpu_count() or 2) * 4)
    if len(positions) > 64:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(check, positions))
    else:
        results = [check(i) for i in positions]
    return [(i, *p) for i, p in results if p is not None]


def _find_on_all_ranks(dataset: Sequence[dict[str, Any]], formats: Collection[str] | None) -> list[tuple[int, str, str]]:
    """:func:`find_bad_images` of the whole dataset, each rank checking every world-th file
    and all ranks receiving all results (so every rank drops the same images)."""
    rank, world = world_info()
    mine = find_bad_images(dataset, range(rank, len(dataset), world), formats)
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return sorted(p for part in gathered for p in part)


def report_bad_images(
    dataset: Sequence[dict[str, Any]],
    policy: str,
    source: str,
    positions: Sequence[int] | None = None,
    formats: Collection[str] | None = None,
    *,
    all_ranks: bool = False,
) -> set[int]:
    """Positions of the bad images among ``dataset[positions]`` (default: all); see :func:`image_problem`.

    ``policy`` "skip" counts them and logs the one-line summary of the other skip policies
    (``source`` starts it); "error" raises a :class:`BadImageError` for the first one
    (file, image id, problem, what to do). With ``all_ranks`` (whole dataset only) the work
    is split between the processes of torch.distributed and every rank gets the same result
    (a collective: call it on every rank).

    Cost: one :func:`verify_image` per file (a read plus a CRC or byte scan, no decoding
    for PNG/JPEG), in up to 16 threads: about 0.1-0.4 ms of CPU per 640x480 file.
    """
    if all_ranks and positions is None:
        bad = _find_on_all_ranks(dataset, formats)
    else:
        bad = find_bad_images(dataset, positions, formats)
    log = ProblemLog(policy, "images", "DATALOADER.ON_BAD_IMAGE", BadImageError)
    for _, kind, message in bad:
        log.report(kind, message)
    log.summary(source)
    return {i for i, _, _ in bad}


def drop_bad_images(
    dataset: Sequence[dict[str, Any]], policy: str, source: str, formats: Collection[str] | None = None, *, all_ranks: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """``(kept dicts, number dropped)`` after :func:`report_bad_images` over the whole dataset."""
    bad = report_bad_images(dataset, policy, source, formats=formats, all_ranks=all_ranks)
    return [d for i, d in enumerate(dataset) if i not in bad], len(bad)
