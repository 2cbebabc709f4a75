#!/usr/bin/env python3
"""What one camera frame costs the node besides the model call, measured side by side with it.

    python scripts/ros/profile_frame_path.py --frames 40                       # this checkout
    python scripts/ros/profile_frame_path.py --compare /tmp/before . --rounds 3 --json out.json

A 640x480 bgr8 ``sensor_msgs/Image`` (its fields, with the data in ``array.array('B')`` as rclpy
gives it) goes the node's way: the image conversion (cv_bridge where it imports, else the ROS-free
converter), the Pipeline and the Segmenter (pre-processing, the backend call, post-processing),
the result message's mask and, where rclpy imports, the serialisation of the mask twice (in
``~/result`` and on ``~/mask``), which is what publishing costs. Node overhead = everything but
the backend call; its share of the frame time is the figure docs/ros.md reports.

The frame path of a checkout is read from its code: a checkout with ``PendingFrame`` converts in the
worker and writes the mask once (``mask_to_mono8_buffer``); an older one converts in the callback
and copies the mask into the message as the node then did. ``--compare`` runs the checkouts in
alternating rounds in fresh processes (``PYTHONPATH`` set to each), so load from other processes
on a shared machine hits all of them alike, and prints the CPU (lscpu's model and flags) and the
load average with the numbers.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

STAGES = ("convert", "preprocess", "model", "postprocess", "message", "serialize")


def _cpu() -> dict[str, str]:
    """lscpu's model name and flags (empty where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"model": "", "flags": ""}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {"model": fields.get("Model name", "").strip(), "flags": fields.get("Flags", "").strip(),
            "cpus": fields.get("CPU(s)", "").strip()}


def _camera_frame(width: int, height: int) -> Any:
    """A bgr8 Image's fields: a synthetic scene (shapes on a textured background) as a camera sends it."""
    import cv2
    import numpy as np

    from coupalign_core.runtime.conversions import ImageFields

    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_LINEAR)
    cv2.rectangle(image, (width // 5, height // 4), (width // 2, height // 2), (40, 40, 220), -1)
    cv2.circle(image, (3 * width // 4, 2 * height // 3), height // 6, (200, 60, 30), -1)
    data = array.array("B", image.tobytes())
    return ImageFields(height, width, "bgr8", 0, width * 3, data)


def _converter() -> tuple[str, Callable[[Any], Any]]:
    """The node's image conversion here: cv_bridge if it imports (and the checkout uses it), else ours."""
    from coupalign_core.runtime.conversions import image_to_rgb

    try:
        from coupalign_ros.images import ImageConverter
    except ImportError:  # a checkout without cv_bridge support, or no ROS
        return "coupalign_core.runtime.conversions", image_to_rgb
    converter = ImageConverter()
    if converter.bridge is None:
        return converter.name, image_to_rgb

    def bridge(fields: Any) -> Any:
        from sensor_msgs.msg import Image

        msg = Image(height=fields.height, width=fields.width, encoding=fields.encoding,
                    is_bigendian=fields.is_bigendian, step=fields.step)
        msg.data = fields.data  # array.array: kept as it is, as rclpy does
        return converter.image(msg)

    return converter.name, bridge


def _serializer() -> Callable[[Any, int, int], bytes] | None:
    """mask bytes -> a serialised sensor_msgs/Image, as publishing ~/mask does (None without rclpy)."""
    try:
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import Image
    except ImportError:
        return None

    def serialize(data: Any, height: int, width: int) -> bytes:
        msg = Image(height=height, width=width, encoding="mono8", step=width)
        msg.data = data if isinstance(data, array.array) else array.array("B", data)
        return serialize_message(msg)

    return serialize


def measure(checkpoint: Path, frames: int, width: int, height: int, text: str) -> dict[str, Any]:
    """Per-stage milliseconds of ``frames`` frames through this process's checkout."""
    import coupalign_core
    from coupalign_core.inference import Segmenter
    from coupalign_core.runtime import conversions
    from coupalign_core.runtime import pipeline as pipeline_module
    from coupalign_core.runtime.pipeline import Frame, Pipeline

    lazy = hasattr(pipeline_module, "PendingFrame")
    seg = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu")
    converter_name, convert = _converter()
    serialize = _serializer()
    fields = _camera_frame(width, height)
    pipe = Pipeline(seg)
    pipe.set_command(text, arrival_ns=0)
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    # the Segmenter's own timer brackets pre-processing, the backend call and post-processing
    for i in range(frames + 5):
        t0 = time.perf_counter()
        if lazy:  # the callback checks the fields; the worker converts the frame it processes
            conversions.check_image_fields(fields)
            rgb = pipe.convert(pipeline_module.PendingFrame(lambda: convert(fields), i + 1)).image
        else:  # the callback converted every frame
            rgb = convert(fields)
        t1 = time.perf_counter()
        output = pipe.process(Frame(rgb, i + 1))
        t2 = time.perf_counter()
        assert output is not None
        if lazy:
            values = output.message_fields(mask=False)
            mask = conversions.mask_to_mono8_buffer(output.result.mask)
        else:
            values = output.message_fields()
            mask = array.array("B", values["mask"].data)  # the node's _fill_image
        t3 = time.perf_counter()
        if serialize is not None:
            serialize(mask, height, width)  # ~/result (its mask field)
            serialize(mask, height, width)  # ~/mask
        t4 = time.perf_counter()
        if i < 5:
            continue  # warm-up
        seg_ms = output.result.timings
        timings["convert"].append((t1 - t0) * 1e3)
        timings["preprocess"].append(seg_ms["preprocess"])
        timings["model"].append(seg_ms["inference"])
        timings["postprocess"].append(seg_ms["postprocess"])
        # the pipeline's bookkeeping around the Segmenter belongs to the node's overhead
        timings["message"].append((t3 - t2) * 1e3 + max(0.0, (t2 - t1) * 1e3 - seg_ms["total"]))
        timings["serialize"].append((t4 - t3) * 1e3)
    median = {stage: statistics.median(v) for stage, v in timings.items()}
    frame = sum(median.values())
    overhead = frame - median["model"]
    per_frame = [sum(timings[s][k] for s in STAGES) for k in range(frames)]
    per_overhead = [per_frame[k] - timings["model"][k] for k in range(frames)]
    return {
        "checkout": str(Path(coupalign_core.__file__).resolve().parents[1]),
        "frame_path": "lazy conversion, mask written once" if lazy else "eager conversion, mask copied",
        "converter": converter_name,
        "serialization": serialize is not None,
        "frames": frames, "size": f"{width}x{height}", "encoding": "bgr8",
        "median_ms": median,
        "frame_ms": frame,
        "overhead_ms": overhead,
        "overhead_share": overhead / frame,
        "overhead_share_of_medians_per_frame": statistics.median(o / f for o, f in zip(per_overhead, per_frame)),
        "load_average_1min": os.getloadavg()[0],
    }


def compare(checkouts: list[Path], rounds: int, argv: list[str]) -> list[dict[str, Any]]:
    """Alternate the checkouts in fresh processes, ``rounds`` times."""
    runs = []
    for r in range(rounds):
        for checkout in checkouts:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout.resolve()),
                                                               os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            load_before = os.getloadavg()[0]
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "-", *argv],
                                  env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(f"profiling {checkout} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["round"], result["load_average_1min_before"] = r + 1, load_before
            runs.append(result)
            print(_line(result), file=sys.stderr, flush=True)
    return runs


def _line(result: dict[str, Any]) -> str:
    m = result["median_ms"]
    return (f"{result['checkout']} ({result['frame_path']}, {result['converter']}): frame {result['frame_ms']:.2f} ms"
            f" = model {m['model']:.2f} + overhead {result['overhead_ms']:.2f} ({100 * result['overhead_share']:.1f} %:"
            f" convert {m['convert']:.2f}, pre {m['preprocess']:.2f}, post {m['postprocess']:.2f},"
            f" message {m['message']:.2f}, serialize {m['serialize']:.2f}); load {result['load_average_1min']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model (default: models/coupalign-synthetic.safetensors of this repository)")
    parser.add_argument("--frames", type=int, default=40, help="frames measured per run (after 5 warm-up frames)")
    parser.add_argument("--size", default="640x480", help="camera frame WxH (default 640x480)")
    parser.add_argument("--text", default="the red box on the left", help="the command")
    parser.add_argument("--compare", nargs="+", type=Path, default=None,
                        help="checkouts to run in alternating rounds (each in its own process)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    parser.add_argument("--json", default=None, help="write the results here ('-': stdout, one line)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    checkpoint = args.checkpoint or Path(__file__).resolve().parents[2] / "models" / "coupalign-synthetic.safetensors"
    if args.compare:
        passed = ["--checkpoint", str(checkpoint.resolve()), "--frames", str(args.frames), "--size", args.size,
                  "--text", args.text]
        report: Any = {"cpu": _cpu(), "runs": compare(args.compare, args.rounds, passed)}
        for checkout in args.compare:
            mine = [r for r in report["runs"] if r["checkout"] == str(checkout.resolve())]
            if mine:
                print(f"{checkout}: overhead {statistics.median(r['overhead_ms'] for r in mine):.2f} ms of "
                      f"{statistics.median(r['frame_ms'] for r in mine):.2f} ms "
                      f"({100 * statistics.median(r['overhead_share'] for r in mine):.1f} %), median of "
                      f"{len(mine)} runs", file=sys.stderr)
        print(f"cpu: {report['cpu']['model']} ({report['cpu']['cpus']} CPUs)", file=sys.stderr)
    else:
        report = measure(checkpoint, args.frames, width, height, args.text)
        if args.json != "-":
            print(_line(report), file=sys.stderr)
    if args.json == "-":
        print(json.dumps(report))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
