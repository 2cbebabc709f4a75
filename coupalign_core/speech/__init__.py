"""Spoken commands, offline and without ROS: audio in, the command's text out (or "no command").

- :mod:`.audio`: any WAV (rate, channels, PCM or float) -> 16 kHz mono float32; 16-bit WAV out
- :mod:`.vad`: :class:`VoiceActivityDetector` (energy against the noise floor, with hangover)
- :mod:`.grammar`: the command grammar as a tree that writes JSGF, matches text and vetoes words
- :mod:`.worlds`: each world's descriptions from its generator's templates (:func:`register_world`)
- :mod:`.recognizer`: :class:`Transcriber` (pocketsphinx with the grammar, or free speech)
- :mod:`.metrics`: word error rate and sentence accuracy
- :mod:`.synthesis`: espeak-ng test speech and noise at a given SNR

::

    from coupalign_core.speech import Transcriber
    t = Transcriber().transcribe_file("command.wav")
    print(t.text if t.is_command else f"no command: {t.reason}")
"""

from .audio import SAMPLE_RATE, Audio, AudioError, load_audio, parse_wav, read_wav, resample, to_mono, write_wav
from .grammar import Grammar, command_grammar
from .metrics import SpeechScores, edit_distance
from .recognizer import MODES, RecognizerOptions, Transcriber, Transcript, WordTiming
from .vad import Utterance, VadOptions, VoiceActivityDetector, detect_utterances
from .worlds import WorldGrammar, grammar_for, register_world, world_grammar, world_names

__all__ = [
    "MODES", "SAMPLE_RATE", "Audio", "AudioError", "Grammar", "RecognizerOptions", "SpeechScores", "Transcriber",
    "Transcript", "Utterance", "VadOptions", "VoiceActivityDetector", "WordTiming", "WorldGrammar",
    "command_grammar", "detect_utterances", "edit_distance", "grammar_for", "load_audio", "parse_wav", "read_wav",
    "register_world", "resample", "to_mono", "world_grammar", "world_names", "write_wav",
]
