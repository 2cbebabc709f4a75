"""Replay a ROS 2 bag through the node's pipeline and score it, without ROS.

Reads rosbag2 bags (a bag folder, or one .db3 or .mcap file; Humble or Jazzy), pairs each camera
image with the command in force at its stamp, segments it with the same pipeline as the ROS node, writes the
coupalign_ros/ReferringSegmentation results to --out, and, when the bag carries mono8
ground-truth masks (same header stamp as their image), prints oIoU, mIoU and prec@X. --json writes
RISMetrics.compute() plus per-frame latency figures; --overlays a PNG contact sheet. None of the
outputs may exist unless --overwrite; they are checked, and the bag is opened, before the model loads.
A bag with aligned depth, CameraInfo and ground-truth 3D points (`make-bag --dataset tabletop`) is also
scored in 3D: the error of the point the node publishes on ~/target_point (same function, the node's
default limits) for every found target: median, p90, and the shares within 2 and 5 cm.
An MCAP cut short (a recording that did not finish) is replayed up to the cut, with a warning that
says how many messages were lost.

Example (the bag from `coupalign make-bag`):
  coupalign bag-eval bags/synth-val --checkpoint models/coupalign-synthetic.safetensors \\
      --out outputs/synth-val-results --json outputs/bag-eval.json --overlays outputs/bag-eval.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from coupalign_core.bags import (
    CAMERA_INFO_TOPIC,
    COLOR_TOPIC,
    COMMAND_TOPIC,
    DEPTH_TOPIC,
    DISTROS,
    GT_POINT_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    RESULT_TOPIC,
    STORAGES,
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("bag", help="input bag folder (sqlite3 or MCAP), or one .db3 or .mcap file")
    parser.add_argument("--checkpoint", required=True, help="a CoupAlign checkpoint (.pt)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--threshold", type=float, default=0.5, help="score at or above which found=True")
    parser.add_argument("--image-topic", help=f"(default: {IMAGE_TOPIC}, or {COLOR_TOPIC} when only that is there)")
    parser.add_argument("--command-topic", default=COMMAND_TOPIC, help=f"(default: {COMMAND_TOPIC})")
    parser.add_argument("--gt-topic", default=GT_TOPIC,
                        help=f"ground-truth mono8 masks (default: {GT_TOPIC}; scored when present)")
    parser.add_argument("--depth-topic", default=DEPTH_TOPIC, help=f"aligned depth (default: {DEPTH_TOPIC})")
    parser.add_argument("--camera-info-topic", default=CAMERA_INFO_TOPIC, help=f"(default: {CAMERA_INFO_TOPIC})")
    parser.add_argument("--gt-point-topic", default=GT_POINT_TOPIC,
                        help=f"ground-truth 3D points (default: {GT_POINT_TOPIC}; 3D scored when all three are there)")
    parser.add_argument("--distro", choices=DISTROS, default="jazzy",
                        help="type store for bags without message definitions (default: jazzy)")
    parser.add_argument("--out", help="write the results to this new bag folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --out, --json and --overlays outputs (by default they are refused)")
    parser.add_argument("--out-storage", choices=STORAGES, help="storage of --out (default: the input's)")
    parser.add_argument("--result-topic", default=RESULT_TOPIC, help=f"(default: {RESULT_TOPIC})")
    parser.add_argument("--command-immediate", action="store_true",
                        help="apply each command to every later frame whatever its stamp")
    parser.add_argument("--json", dest="json_out", help="write metrics and latency as JSON")
    parser.add_argument("--overlays", help="write a PNG contact sheet of overlays")
    parser.add_argument("--max-overlays", type=int, default=16, help="frames on the contact sheet (default: 16)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="time the first frame too (by default it is segmented once untimed first)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--speech", action="store_true",
                        help="a speech bag (make-bag --speech): recognise its audio, then replay the frames "
                             "commanded by the recognised and by the typed text; WER, sentence accuracy, both metrics")
    parser.add_argument("--audio-topic", default="/audio/audio_stamped", help="(--speech)")
    parser.add_argument("--reference-topic", default="/coupalign/command_reference", help="(--speech)")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"bag-eval {report['bag']}: {report['processed']}/{report['frames']} frames segmented, "
             f"{report['with_ground_truth']} scored"]
    if "oIoU" in report:
        precs = "  ".join(f"{k} {report[k]:.2f}" for k in sorted(report) if k.startswith("prec@"))
        lines.append(f"  oIoU {report['oIoU']:.2f}  mIoU {report['mIoU']:.2f}  {precs}  (n={report['n']})")
    if "latency_ms_p50" in report:
        lines.append(f"  latency ms: mean {report['latency_ms_mean']:.1f}  p50 {report['latency_ms_p50']:.1f}  "
                     f"p90 {report['latency_ms_p90']:.1f}  p99 {report['latency_ms_p99']:.1f}")
    if "point_n" in report:
        median, p90 = report["point_error_m_median"], report["point_error_m_p90"]
        errors = (f"median {100 * median:.1f} cm  p90 {100 * p90:.1f} cm  " if median is not None else "")
        lines.append(f"  target point: {errors}within 2 cm {report['point_within_2cm']:.1f}%  "
                     f"within 5 cm {report['point_within_5cm']:.1f}%  "
                     f"({report['point_estimated']}/{report['point_n']} found targets with a point)")
    if report["dropped"] or report["rejected"] or report["errors"]:
        lines.append(f"  dropped {report['dropped']}  rejected {report['rejected']}  errors {report['errors']}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    """``report`` as JSON at ``path``, complete or not at all (written beside it, then renamed)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(report, indent=2))
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ValueError(f"cannot write --json file {path}: {e.strerror or e}") from e


def default_image_topic(bag: str, distro: str) -> str:
    """/camera/image_raw, or the RealSense colour topic of a bag with depth that has only that."""
    from coupalign_core.bags import BagReader

    with BagReader(bag, distro) as reader:
        topics = reader.topics
    return COLOR_TOPIC if IMAGE_TOPIC not in topics and COLOR_TOPIC in topics else IMAGE_TOPIC


def run(args: argparse.Namespace) -> int:
    from coupalign_core.bags import check_bag, check_new_output, replay_bag
    from coupalign_core.inference import Segmenter

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_overlays < 1:
        raise ValueError(f"--max-overlays must be >= 1, got {args.max_overlays}")
    if args.speech:
        return run_speech(args)
    # Everything that can be refused is refused before the model loads.
    check_new_output(args.out, "output bag", overwrite=args.overwrite, bag=True)
    check_new_output(args.json_out, "--json file", overwrite=args.overwrite)
    check_new_output(args.overlays, "overlay sheet", overwrite=args.overwrite)
    image_topic = args.image_topic or default_image_topic(args.bag, args.distro)
    check_bag(args.bag, distro=args.distro, image_topic=image_topic, command_topic=args.command_topic,
              gt_topic=args.gt_topic)
    # The Segmenter alone decides found (score >= --threshold); the replay reads it.
    segmenter = Segmenter.from_checkpoint(args.checkpoint, backend=args.backend, device=args.device,
                                          precision=args.precision, threshold=args.threshold)
    report = replay_bag(
        args.bag, segmenter, distro=args.distro, image_topic=image_topic,
        command_topic=args.command_topic, gt_topic=args.gt_topic, depth_topic=args.depth_topic,
        camera_info_topic=args.camera_info_topic, gt_point_topic=args.gt_point_topic, out=args.out,
        out_storage=args.out_storage,
        result_topic=args.result_topic, overlays=args.overlays, max_overlays=args.max_overlays,
        command_immediate=args.command_immediate, warmup=not args.no_warmup, progress=not args.no_progress,
        overwrite=args.overwrite,
    ).to_dict()
    report["checkpoint"] = str(args.checkpoint)
    report["backend"], report["device"], report["precision"] = args.backend, args.device, args.precision
    print(format_report(report))
    if args.json_out:
        write_json(report, Path(args.json_out))
        log.info("wrote %s", args.json_out)
    if args.out:
        log.info("results in %s", args.out)
    if args.overlays and report.get("overlays"):
        log.info("contact sheet %s", report["overlays"])
    return 0 if report["processed"] else 1


def run_speech(args: argparse.Namespace) -> int:
    from coupalign_core.bags import check_new_output
    from coupalign_core.bags.speech import replay_speech_bag
    from coupalign_core.inference import Segmenter
    from coupalign_core.speech import Transcriber

    for flag in ("out", "overlays"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} is not written with --speech (only --json)")
    check_new_output(args.json_out, "--json file", overwrite=args.overwrite)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, backend=args.backend, device=args.device,
                                          precision=args.precision, threshold=args.threshold)
    result = replay_speech_bag(args.bag, segmenter, Transcriber(), distro=args.distro, audio_topic=args.audio_topic,
                               reference_topic=args.reference_topic, image_topic=args.image_topic,
                               gt_topic=args.gt_topic, progress=not args.no_progress)
    report = result.to_dict()
    s = result.scores
    if "wer" in s:
        print(f"speech {args.bag}: {result.to_dict()['utterances']} utterances, WER {s['wer']:.2f} %, "
              f"sentences right {s['sentence_accuracy']:.2f} % (n={s['sentences']})")
    for name, rep in (("from speech", result.speech_report), ("from text", result.text_report)):
        if rep:
            print(f"{name}: " + format_report(rep).replace("\n", "\n  "))
    if args.json_out:
        write_json(report, Path(args.json_out))
    return 0 if result.speech_report.get("processed") else 1
