"""Spoken commands measured end to end: synthesised speech -> recognition -> segmentation, against typed text.

Writes a synthetic world from a seed the shipped model never saw, takes its first ``--sentences``
sentences (targets and no-targets as the world writes them), has espeak-ng say each with every
voice at every speed, clean and with white noise at ``--snr-db``, recognises them with the command
grammar (``coupalign_core.speech``, one thread) and segments each image with the recognised text
and with the typed text. Reports per condition: word error rate, whole sentences right, the
recogniser's real-time factor (process CPU time of voice-activity detection + resampling +
decoding over the audio's length; the decoder is single-threaded) and oIoU / mIoU from speech
next to typed. A command that gave no text counts as an empty predicted mask.

Example (the numbers in docs/speech.md)::

    OMP_NUM_THREADS=1 python scripts/speech_eval.py --out outputs/speech_eval
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIMD_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "amx_tile"})
EVAL_SEED = 20261201  # a world no model here was trained on (training: 0-5; the demo: 20261127)


def cpu_description() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(),
                            "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and "model" not in info:
                info["model"] = value.strip()
            if key.strip() == "flags" and "flags" not in info:
                flags = set(value.split())
                info["flags"] = sorted(flags & SIMD_FLAGS)
    except OSError:
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "speech_eval")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--voices", nargs="+", default=None, help="espeak-ng voices (default: three)")
    parser.add_argument("--speeds", nargs="+", type=int, default=None, help="words per minute (default: two)")
    parser.add_argument("--snr-db", type=float, default=20.0)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "coupalign-synthetic.safetensors")
    parser.add_argument("--no-segmentation", action="store_true", help="recognition only (no oIoU)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from coupalign_core.data import ReferDataset
    from coupalign_core.data.synthetic import generate
    from coupalign_core.metrics import RISMetrics
    from coupalign_core.speech import RecognizerOptions, SpeechScores, Transcriber
    from coupalign_core.speech.synthesis import DEFAULT_SPEEDS, DEFAULT_VOICES, add_noise, synthesize

    voices = args.voices or list(DEFAULT_VOICES)
    speeds = args.speeds or list(DEFAULT_SPEEDS)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        # ~7 sentences an image, 80 % of images in train: enough images for the sentences asked for
        num_images = max(20, int(args.sentences / 5.0 / 0.8) + 10)
        generate(Path(tmp) / "data", seed=args.seed, num_images=num_images, progress=False)
        dataset = ReferDataset(Path(tmp) / "data", "synthetic", "unc", "train", sentences="all")
        if len(dataset) < args.sentences:
            raise SystemExit(f"the world has only {len(dataset)} sentences")
        items = [dataset[i] for i in range(args.sentences)]

    transcriber = Transcriber(RecognizerOptions())
    segmenter = None
    if not args.no_segmentation:
        from coupalign_core.inference import Segmenter

        segmenter = Segmenter.from_checkpoint(args.checkpoint, backend="torch", device="cpu")
    mask_cache: dict[tuple[int, str], np.ndarray] = {}

    def predict(i: int, text: str) -> np.ndarray:
        if segmenter is None:
            return np.zeros_like(items[i]["mask"], dtype=bool)
        key = (i, text)
        if key not in mask_cache:
            mask_cache[key] = np.asarray(segmenter(items[i]["image"], text).mask, dtype=bool) if text else \
                np.zeros_like(items[i]["mask"], dtype=bool)
        return mask_cache[key]

    typed = RISMetrics()
    for i, item in enumerate(items):
        typed.update(predict(i, item["sentence"]), item["mask"])

    rng = np.random.default_rng(args.seed)
    conditions: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    total_scores = {noisy: SpeechScores() for noisy in (False, True)}
    total_metrics = {noisy: RISMetrics() for noisy in (False, True)}
    total_cpu_s = {False: 0.0, True: 0.0}
    total_audio_s = {False: 0.0, True: 0.0}
    for voice in voices:
        for speed in speeds:
            for noisy in (False, True):
                name = f"{voice}@{speed}{'+noise' if noisy else ''}"
                scores, metrics = SpeechScores(), RISMetrics()
                cpu_s = audio_s = 0.0
                for i, item in enumerate(items):
                    audio = synthesize(item["sentence"], voice=voice, speed=speed)
                    if noisy:
                        audio = add_noise(audio, args.snr_db, rng)
                    t0 = time.process_time()
                    result = transcriber.transcribe(audio)
                    cpu_s += time.process_time() - t0
                    audio_s += audio.size / 16000.0
                    text = result.text if result.is_command else ""
                    if scores.update(item["sentence"], text):
                        errors.append({"condition": name, "typed": item["sentence"], "heard": text,
                                       "reason": result.reason})
                    pred = predict(i, text)
                    metrics.update(pred, item["mask"])
                    total_scores[noisy].update(item["sentence"], text)
                    total_metrics[noisy].update(pred, item["mask"])
                total_cpu_s[noisy] += cpu_s
                total_audio_s[noisy] += audio_s
                conditions[name] = {**scores.summary(), "rtf": round(cpu_s / audio_s, 4),
                                    "oIoU": round(metrics.compute()["oIoU"], 2)}
                print(name, json.dumps(conditions[name]), flush=True)

    typed_scores = typed.compute()
    summary: dict[str, Any] = {}
    for noisy in (False, True):
        m = total_metrics[noisy].compute()
        key = f"noise_{args.snr_db:g}dB" if noisy else "clean"
        summary[key] = {**total_scores[noisy].summary(), "rtf": round(total_cpu_s[noisy] / total_audio_s[noisy], 4),
                        "oIoU_speech": round(m["oIoU"], 2), "mIoU_speech": round(m["mIoU"], 2),
                        "oIoU_typed": round(typed_scores["oIoU"], 2), "mIoU_typed": round(typed_scores["mIoU"], 2),
                        "oIoU_ratio": round(m["oIoU"] / typed_scores["oIoU"], 4) if typed_scores["oIoU"] else None}
    kinds = collections.Counter(str(it["kind"]) for it in items)
    report = {
        "seed": args.seed, "sentences": len(items), "kinds": dict(kinds), "voices": voices, "speeds_wpm": speeds,
        "snr_db": args.snr_db, "grammar_words": len(transcriber.grammar.words()) if transcriber.grammar else None,
        "vetoed_words": sorted(transcriber.vetoed), "summary": summary, "conditions": conditions,
        "cpu": cpu_description(), "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True,
                                                              text=True).stdout.strip(),
        "wall_s": round(time.time() - started, 1), "checkpoint": None if args.no_segmentation else str(args.checkpoint),
    }
    (args.out / "speech_eval.json").write_text(json.dumps(report, indent=2))
    (args.out / "errors.json").write_text(json.dumps(errors, indent=1))
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
