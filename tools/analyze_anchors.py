#!/usr/bin/env python
"""How well do the configured anchors cover a dataset's boxes? And which anchors would do better?

    python tools/analyze_anchors.py --config-file CFG [--dataset NAME ...] [--suggest] [--output DIR] [KEY VALUE ...]

For every ground-truth box (after the resize of the data pipeline) it finds the best IoU
over the anchors that the model's own anchor generator places on that image, and prints
the fraction of boxes with an anchor at IoU >= MODEL.RETINANET.IOU_THRESHOLDS[-1] (the
matcher's foreground threshold) and the mean best IoU, overall and per box size.
``--suggest`` searches MODEL.ANCHOR_GENERATOR.{SIZES, OCTAVE_SCALES, ASPECT_RATIOS} with
the same number of anchors per location and prints the YAML lines to paste.
Level advice (unless ``--no-levels``): the configured head levels against adding P2 (stride 4)
and dropping top levels no box needs, with coverage, anchors per image and GFLOPs at the test
size for each, and the overrides of the recommended levels (retinakit.analysis.anchors.levels).
The histogram goes to DIR/anchor_coverage.png and the numbers to DIR/anchor_coverage.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinakit.analysis.anchors import (
    FINE_EDGES,
    AnchorCoverageReport,
    LevelAdvice,
    advise_levels,
    anchor_coverage,
    suggest_anchors,
)
from retinakit.analysis.anchors.inputs import build_cpu_model
from retinakit.config import ConfigError, get_cfg
from retinakit.utils.errors import exit_code_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--dataset", nargs="+", default=None, metavar="NAME",
                   help="registered dataset name(s) (default: DATASETS.TRAIN and DATASETS.TRAIN_JSON)")
    p.add_argument("--suggest", action="store_true", help="search anchors that cover the boxes better")
    p.add_argument("--output", default=None, metavar="DIR", help="folder for the PNG and JSON (default OUTPUT_DIR/anchors)")
    p.add_argument("--mode", choices=("train", "test"), default="train",
                   help="resize as in training (every INPUT.MIN_SIZE_TRAIN) or as at test time")
    p.add_argument("--max-images", type=int, default=2000, help="use a fixed random subset of this many images (0: all)")
    p.add_argument("--method", choices=("auto", "grid", "bruteforce"), default="auto",
                   help="exact closed form for grid anchors (auto) or IoU with every anchor")
    p.add_argument("--no-levels", action="store_true", help="skip the pyramid-level advice (P2, dropping top levels)")
    p.add_argument("--min-level-gain", type=float, default=0.05, metavar="G",
                   help="a finer level is recommended only if it raises small-box coverage by at least G (default 0.05)")
    p.add_argument("--min-gain-per-gflop", type=float, default=0.0, metavar="R",
                   help="... and by at least R per extra model GFLOP at the test size (default 0: off)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    return p.parse_args(argv)


def load_dicts(cfg: Any, names: list[str] | None) -> tuple[list[str], list[dict]]:
    from retinakit.data import get_detection_dataset_dicts, get_train_dataset_names
    from retinakit.data.errors import check_policy

    names = names or get_train_dataset_names(cfg)
    dicts = get_detection_dataset_dicts(
        names, on_bad_annotation=check_policy(cfg.DATALOADER.ON_BAD_ANNOTATION, "DATALOADER.ON_BAD_ANNOTATION"),
        check_image_files=False,
    )
    return names, dicts


def report_json(r: AnchorCoverageReport) -> dict[str, Any]:
    return {
        "threshold": r.threshold, "boxes": r.num_boxes, "coverage": r.coverage, "mean_best_iou": r.mean_best_iou,
        "anchors_per_location": r.anchors_per_location,
        "buckets": [{"bucket": n, "boxes": c, "coverage": cov, "mean_best_iou": m} for n, c, cov, m in r.rows()],
    }


def plot(reports: list[AnchorCoverageReport], path: str, levels: LevelAdvice | None = None) -> bool:
    """Best-IoU histogram, coverage per box size and (with ``levels``) coverage per box size of
    each level option with its GFLOPs; False (with a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("NOTE: matplotlib is not installed (pip install matplotlib); no PNG written.")
        return False
    fig, axes = plt.subplots(1, 3 if levels else 2, figsize=(19 if levels else 12, 4.5))
    ax0, ax1 = axes[0], axes[1]
    bins = [i / 40 for i in range(41)]
    for r in reports:
        ax0.hist(r.best_iou.numpy(), bins=bins, alpha=0.55, label=f"{r.label}: {r.coverage:.1%} covered")
    ax0.axvline(reports[0].threshold, color="k", linestyle="--", label=f"foreground IoU {reports[0].threshold:g}")
    ax0.set(xlabel="best anchor IoU of a GT box", ylabel="GT boxes", title="Best anchor IoU per ground-truth box")
    ax0.legend()
    names = [n for n, c, _, _ in reports[0].rows()[4:] if c]  # fine size bins with boxes
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        cov = {n: cv for n, _, cv, _ in r.rows()}
        ax1.bar([i + k * width for i in range(len(names))], [cov[n] for n in names], width, label=r.label)
    ax1.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(names))], names, rotation=30)
    ax1.set(xlabel="box size sqrt(area), px (resized)", ylabel="coverage", ylim=(0, 1.05), title="Coverage per box size")
    ax1.legend()
    if levels:
        plot_levels(axes[2], levels)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_levels(ax: Any, advice: LevelAdvice) -> None:
    """Coverage per box size of every level option; the legend gives its model GFLOPs at the test size."""
    names = [n for n, c, _, _ in advice.options[0].report.rows()[4:] if c]
    width = 0.8 / len(advice.options)
    for k, o in enumerate(advice.options):
        cov = {n: cv for n, _, cv, _ in o.report.rows()}
        star = " (recommended)" if o is advice.recommended else ""
        ax.bar([i + k * width for i in range(len(names))], [cov[n] for n in names], width,
               label=f"{', '.join(o.head_in_features)}: {o.model_gflops:.1f} GFLOPs{star}")
    ax.set_xticks([i + width * (len(advice.options) - 1) / 2 for i in range(len(names))], names, rotation=30)
    h, w = advice.test_size
    ax.set(xlabel="box size sqrt(area), px (resized)", ylabel="coverage", ylim=(0, 1.05),
           title=f"Pyramid levels (GFLOPs at {h}x{w})")
    ax.legend(fontsize=7, loc="lower right")


def print_levels(advice: LevelAdvice, anchors: str) -> None:
    h, w = advice.test_size
    print(f"\nPyramid levels with the {anchors} anchors: coverage by box size, anchors per image and GFLOPs at the test size {h}x{w} "
          "(torch.utils.flop_counter on the built head / backbone + FPN + head; (+) vs configured):\n")
    print(advice.table())
    if advice.p2_note:
        print(f"\nNo P2 option: {advice.p2_note}.")
    if anchors == "configured":
        print("\n(Measured with the configured anchor sizes; with --suggest the levels are measured on the suggested "
              "ones, where a finer level often gains less.)")
    print(f"\nRecommended levels: {', '.join(advice.recommended.head_in_features)} ({advice.recommended.name}): {advice.reason}.")
    print(f"Paste into the config{' after the suggested anchors above' if anchors == 'suggested' else ''}:\n")
    print(advice.yaml())
    print("\nor append to the command line:\n  " + " ".join(shlex.quote(x) for x in advice.overrides()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    build_cpu_model(cfg)  # the model's config checks (levels vs anchor sizes, ...) before the dataset is read
    try:
        names, dicts = load_dicts(cfg, args.dataset)
    except KeyError as e:  # an unknown dataset name: the catalog's message lists the registered ones
        raise ConfigError(str(e.args[0]) if e.args else str(e)) from e
    max_images = args.max_images or None
    print(f"Dataset {', '.join(names)}: {len(dicts)} images; anchors of {args.config_file} ({args.mode} resize)")
    before = anchor_coverage(cfg, dicts, mode=args.mode, max_images=max_images, method=args.method, label="config")
    reports = [before]
    out: dict[str, Any] = {"config_file": args.config_file, "datasets": names, "config": report_json(before)}
    tuned = cfg  # the anchors the level advice starts from: the suggested ones with --suggest
    if args.suggest:
        s = suggest_anchors(cfg, dicts, mode=args.mode, max_images=max_images)
        tuned = cfg.clone()
        tuned.merge_from_list(s.overrides())
        after = anchor_coverage(tuned, dicts, mode=args.mode, max_images=max_images, method=args.method, label="suggested")
        reports.append(after)
        out["suggested"] = {**report_json(after), "SIZES": s.sizes, "OCTAVE_SCALES": s.octave_scales,
                            "ASPECT_RATIOS": s.aspect_ratios}
        print(before.table(after))
        print(f"\nconfig:    {before.summary()}\nsuggested: {after.summary()}")
        print("\nPaste into the config (same number of anchors per location):\n")
        print(s.yaml())
        print("\nor append to the command line:\n  " + " ".join(s.overrides()))
    else:
        print(before.table())
        print(f"\n{before.summary()}")
    levels = None
    if not args.no_levels and before.num_boxes:
        levels = advise_levels(tuned, dicts, mode=args.mode, max_images=max_images, min_gain=args.min_level_gain,
                               min_gain_per_gflop=args.min_gain_per_gflop)
        out["levels"] = {"anchors": "suggested" if args.suggest else "configured", **levels.to_json()}
        print_levels(levels, out["levels"]["anchors"])
    if before.num_boxes and before.coverage < 0.9 and not args.suggest:
        print("Coverage is low: run again with --suggest for better MODEL.ANCHOR_GENERATOR settings.")
    folder = args.output or os.path.join(cfg.OUTPUT_DIR, "anchors")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "anchor_coverage.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    png = os.path.join(folder, "anchor_coverage.png")
    if before.num_boxes and plot(reports, png, levels):
        print(f"Wrote {png}")
    print(f"Wrote {os.path.join(folder, 'anchor_coverage.json')} (size bins: {', '.join(f'{e:g}' for e in FINE_EDGES)})")
    return 0


def run(argv: list[str] | None = None) -> int:
    """``main`` with user errors (config, data, registry names) turned into one message and exit code 2."""
    return exit_code_on_user_error(main, argv, prefix="ERROR")

if __name__ == "__main__":
    sys.exit(run())
