"""Turn a refer-layout split into a ROS 2 bag: camera images, timed commands and ground-truth masks.

Each sentence becomes one camera frame (10 Hz) on /camera/image_raw, its sentence a
std_msgs/String on /coupalign/command 20 ms before the frame (recorded reliable + transient local,
the node's QoS) and its mask a mono8 image (255 = target) with the frame's header stamp on
/coupalign/gt_mask. No ROS needed (rosbags); `ros2 bag play` replays it to the live node.

A world with depth (`coupalign sim`, --dataset tabletop) is recorded as a RealSense driver publishes
it: colour on /camera/color/image_raw, aligned 16UC1 depth on /camera/aligned_depth_to_color/image_raw,
CameraInfo on /camera/color/camera_info and /camera/aligned_depth_to_color/camera_info, plus the
ground-truth 3D target point (geometry_msgs/PointStamped) on /coupalign/gt_point.

Example:
  coupalign make-bag --data-root data/synth --dataset synthetic --split val --out bags/synth-val \\
      --storage mcap --distro jazzy --limit 200
  coupalign make-bag --data-root data/table --dataset tabletop --split val --out bags/table-val
"""

from __future__ import annotations

import argparse
import json
import logging

from coupalign_core.bags import (
    CAMERA_INFO_TOPIC,
    COLOR_TOPIC,
    COMMAND_TOPIC,
    DEPTH_INFO_TOPIC,
    DEPTH_TOPIC,
    DISTROS,
    GT_POINT_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    STORAGES,
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data-root", required=True, help="root of the refer layout")
    parser.add_argument("--dataset", default="synthetic",
                        help="refcoco, refcoco+, refcocog, refclef, synthetic or tabletop")
    parser.add_argument("--split-by", help="unc, umd, google or berkeley (default: the data set's first)")
    parser.add_argument("--split", default="val", help="split to write (default: val)")
    parser.add_argument("--image-root", help="image folder (default: the data set's usual folder under --data-root)")
    parser.add_argument("--out", required=True, help="output bag folder (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing bag at --out (once the new one is complete)")
    parser.add_argument("--storage", choices=STORAGES, default="sqlite3", help="bag storage (default: sqlite3)")
    parser.add_argument("--distro", choices=DISTROS, default="jazzy", help="message type store (default: jazzy)")
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8", help="camera image encoding")
    parser.add_argument("--limit", type=int, help="write at most this many sentences")
    parser.add_argument("--image-topic",
                        help=f"(default: {IMAGE_TOPIC}; {COLOR_TOPIC} for a data set with depth)")
    parser.add_argument("--command-topic", default=COMMAND_TOPIC)
    parser.add_argument("--gt-topic", default=GT_TOPIC)
    parser.add_argument("--depth-topic", default=DEPTH_TOPIC, help="aligned depth, when the data set has it")
    parser.add_argument("--camera-info-topic", default=CAMERA_INFO_TOPIC)
    parser.add_argument("--depth-info-topic", default=DEPTH_INFO_TOPIC)
    parser.add_argument("--gt-point-topic", default=GT_POINT_TOPIC)
    parser.add_argument("--speech", action="store_true",
                        help="record the commands as speech (espeak-ng) on --audio-topic as "
                             "audio_common_msgs/AudioDataStamped, the typed text on --reference-topic")
    parser.add_argument("--voices", nargs="+", default=None, help="espeak-ng voices, used in turn (--speech)")
    parser.add_argument("--speeds", nargs="+", type=int, default=None, help="words per minute, in turn (--speech)")
    parser.add_argument("--audio-topic", default="/audio/audio_stamped")
    parser.add_argument("--reference-topic", default="/coupalign/command_reference")


def run(args: argparse.Namespace) -> int:
    from coupalign_core.bags import check_new_output, refer_items, write_bag
    from coupalign_core.data import ReferDataset
    from coupalign_core.data.refer import DATASET_SPLITS

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    check_new_output(args.out, "output bag", overwrite=args.overwrite, bag=True)  # before reading any data
    split_by = args.split_by
    if split_by is None:
        choices = [s for d, s in DATASET_SPLITS if d == args.dataset]
        if not choices:
            raise ValueError(f"unknown dataset {args.dataset!r}; known: {sorted({d for d, _ in DATASET_SPLITS})}")
        split_by = choices[0]
    dataset = ReferDataset(args.data_root, args.dataset, split_by, args.split, image_root=args.image_root,
                           sentences="all")
    log.info("%r", dataset)
    total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    with_depth = any("depth_file" in record for record in dataset.images.values())
    image_topic = args.image_topic or (COLOR_TOPIC if with_depth else IMAGE_TOPIC)
    if args.speech:
        from coupalign_core.bags.speech import write_speech_bag
        from coupalign_core.speech.synthesis import DEFAULT_SPEEDS, DEFAULT_VOICES

        summary = write_speech_bag(refer_items(dataset, args.limit), args.out, voices=args.voices or DEFAULT_VOICES,
                                   speeds=args.speeds or DEFAULT_SPEEDS, storage=args.storage, distro=args.distro,
                                   encoding=args.encoding, image_topic=image_topic, audio_topic=args.audio_topic,
                                   reference_topic=args.reference_topic, gt_topic=args.gt_topic,
                                   overwrite=args.overwrite, total=total)
        log.info("wrote %d spoken commands (%.1f s of speech) to %s", summary["commands"], summary["speech_s"],
                 args.out)
        print(json.dumps(summary, indent=2))
        return 0
    summary = write_bag(refer_items(dataset, args.limit), args.out, storage=args.storage, distro=args.distro,
                        encoding=args.encoding, image_topic=image_topic, command_topic=args.command_topic,
                        gt_topic=args.gt_topic, depth_topic=args.depth_topic,
                        camera_info_topic=args.camera_info_topic, depth_info_topic=args.depth_info_topic,
                        gt_point_topic=args.gt_point_topic, total=total, overwrite=args.overwrite)
    log.info("wrote %d frames (%.1f s of %s/%s) to %s", summary["frames"], summary["duration_s"],
             args.storage, args.distro, args.out)
    print(json.dumps(summary, indent=2))
    return 0
