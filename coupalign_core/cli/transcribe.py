"""Turn a spoken command (a WAV file) into the command's text, offline (pocketsphinx).

By default the recogniser may only hear the sentences of the command grammar: the words of the
worlds the model was trained on (see docs/speech.md); --free uses pocketsphinx's general English
language model instead. Silence or noise alone gives no command (exit status 1). Any WAV rate,
channel count and sample format (8/16/24/32-bit PCM, 32/64-bit float) is read.

Examples:
  coupalign transcribe command.wav
  coupalign transcribe --json a.wav b.wav
  coupalign transcribe --free --json dictation.wav
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="+", type=Path, help="WAV file(s), one command each")
    parser.add_argument("--json", action="store_true", help="one JSON object per file (text, confidence, words...)")
    parser.add_argument("--free", action="store_true", help="free speech: the general language model, no grammar")
    parser.add_argument("--world", action="append", default=None,
                        help="world whose sentences the grammar covers (repeatable; default: every registered one)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="also veto words this model cannot ground (its stored grounding vocabulary)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="results with a lower mean word confidence are no command (default: 0)")
    parser.add_argument("--print-grammar", action="store_true", help="print the JSGF grammar and exit")


def _vocabulary(checkpoint: Path) -> frozenset[str]:
    from coupalign_core.checkpoint import read_checkpoint
    from coupalign_core.inference.grounding_vocabulary import vocabulary_from_checkpoint

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    vocabulary = vocabulary_from_checkpoint(read_checkpoint(checkpoint))
    if vocabulary is None:
        raise ValueError(f"{checkpoint} stores no grounding vocabulary: nothing to veto words with")
    return vocabulary.words


def run(args: argparse.Namespace) -> int:
    from coupalign_core.speech import RecognizerOptions, Transcriber
    from coupalign_core.speech.audio import AudioError

    if not args.print_grammar:
        for path in args.audio:
            if not path.is_file():
                what = "is a folder, not a WAV file" if path.is_dir() else "does not exist"
                raise FileNotFoundError(f"audio file {path} {what}")
    options = RecognizerOptions(mode="free" if args.free else "grammar", worlds=tuple(args.world or ()),
                                min_confidence=args.min_confidence)
    vocabulary = _vocabulary(args.checkpoint) if args.checkpoint is not None and not args.free else None
    transcriber = Transcriber(options, vocabulary=vocabulary)
    if args.print_grammar:
        if transcriber.grammar is None:
            raise ValueError("--print-grammar needs the grammar (drop --free)")
        print(transcriber.grammar.to_jsgf(), end="")
        return 0
    if transcriber.vetoed:
        log.debug("words the grammar cannot use: %s", ", ".join(sorted(transcriber.vetoed)))
    commands = 0
    for path in args.audio:
        try:
            t = transcriber.transcribe_file(path)
        except AudioError as e:
            raise ValueError(str(e)) from None
        commands += t.is_command
        if args.json:
            print(json.dumps({"file": str(path), **t.to_dict()}))
        elif t.is_command:
            print(f"{path}\t{t.text}\t{t.confidence:.2f}" if len(args.audio) > 1 else t.text)
        else:
            print(f"{path}\t<no command: {t.reason}>" if len(args.audio) > 1 else f"<no command: {t.reason}>")
    return 0 if commands else 1
