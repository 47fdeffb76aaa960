"""The ``retinakit`` command: parser (from the flag table) and dispatch to the subcommands."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..utils.errors import exit_code_on_user_error
from .odtk import OdtkFlagError, add_flags, check_unsupported

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
NVIDIA retinanet-examples (ODTK) command line over retinakit: ODTK's arguments with ODTK's
meaning and defaults. Each flag sets config keys (shown after '->'); every run prints the
equivalent tools/*.py --config-file command and writes the resolved config beside its
outputs. --opts KEY VALUE ... sets any other config key (docs/configs.md).
"""

HELP = {
    "train": "train a model (resumes when MODEL exists)",
    "infer": "run a model on a folder of images; detections JSON, COCO AP with --annotations",
    "export": "export a model to ONNX (.onnx) or a TensorRT engine (.plan)",
}


def _runner(command: str) -> Callable[[argparse.Namespace], int]:
    from . import export, infer, train

    return {"train": train.run, "infer": infer.run, "export": export.run}[command]


def build_parser() -> argparse.ArgumentParser:
    """``retinakit {train,infer,export}`` with the flags of :data:`retinakit.cli.odtk.FLAGS`."""
    parser = argparse.ArgumentParser(prog="retinakit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{train,infer,export}", required=True)
    for command, text in HELP.items():
        p = sub.add_parser(command, help=text, description=f"{text}. {DESCRIPTION}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_flags(p, command)
        if command != "train":
            p.add_argument("--config-file", default="", metavar="FILE",
                           help="retinakit: config of a retinakit .pth that has no MODEL.yaml beside it")
        p.add_argument("--opts", nargs="+", action="extend", default=[], metavar="KEY VALUE",
                       help="retinakit: more config overrides, KEY VALUE pairs (applied after the flags)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``retinakit ARGS``; user errors print one line and return 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    logging.getLogger("retinakit").setLevel(logging.INFO)
    return exit_code_on_user_error(_parse_and_run, args_list)


def _parse_and_run(args_list: list[str]) -> int:
    check_unsupported(args_list)  # before parsing: no work, not even a usage error, for these
    args = build_parser().parse_args(args_list)
    if len(args.opts) % 2:
        raise OdtkFlagError(f"--opts takes KEY VALUE pairs; got an odd number of items: {' '.join(args.opts)}.")
    return _runner(args.command)(args)
