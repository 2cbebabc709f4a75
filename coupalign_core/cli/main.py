"""``coupalign <verb>``: the one command-line entry point.

Each verb lives in its own module of this package and exposes ``add_arguments(parser)`` and
``run(args) -> int``. All verbs share the logging set-up below (``-v``, ``-q``, ``--log-file``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# verb -> (module under coupalign_core.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the main job: replay a synthetic bag through the shipped model and score it"),
    "synth": ("synth", "write a synthetic referring benchmark in the refer layout"),
    "sim": ("sim", "render the RGB-D tabletop referring world in the refer layout"),
    "train": ("train", "train a model from a YAML config (single process or torchrun)"),
    "eval": ("evaluate", "score a checkpoint on refer-layout splits (oIoU, mIoU, prec@X)"),
    "segment": ("segment", "segment one image with one sentence and save the overlay"),
    "export": ("export", "export a checkpoint to ONNX or a TensorRT engine"),
    "bench": ("bench", "latency benchmark of an inference backend"),
    "make-bag": ("make_bag", "turn a refer-layout split into a ROS 2 bag"),
    "bag-eval": ("bag_eval", "replay a ROS 2 bag through the pipeline and score it"),
    "transcribe": ("transcribe", "turn a spoken command (WAV) into its text, offline"),
}


def setup_logging(verbosity: int = 0, log_file: str | None = None) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``verb``'s module is imported, so one verb never pays for another's imports."""
    parser = argparse.ArgumentParser(prog="coupalign", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--log-file", help="also write the log to this file")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (module, help_text) in VERBS.items():
        if name != verb:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(f"coupalign_core.cli.{module}")
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if a in VERBS), None)
    args = build_parser(verb).parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose, args.log_file)
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, OSError, RuntimeError) as e:  # user errors and the OS's (permissions, full disk...)
        logging.getLogger("coupalign").error("%s", e)
        if args.verbose:
            raise
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
