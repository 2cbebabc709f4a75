"""How well speech came through: word error rate and whole sentences right, against the typed text.

Both sides are compared as ``data.language.words`` (lower case, punctuation dropped), so "Where's
the red circle?" typed and "where's the red circle" recognised are the same sentence; "where is"
against "where's" is two errors, as a recogniser that wrote it would make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data.language.text import words as split_words


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions turning ``reference`` into ``hypothesis`` (Levenshtein on words)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


@dataclass
class SpeechScores:
    """Accumulates (reference, recognised) pairs; :meth:`summary` gives WER and sentence accuracy."""

    errors: int = 0
    reference_words: int = 0
    sentences: int = 0
    sentences_right: int = 0
    no_command: int = 0  # utterances that gave no command (counted as every word deleted)

    def update(self, reference: str, hypothesis: str | None) -> int:
        """Add one utterance (``hypothesis`` None or "" when it gave no command); returns its word errors."""
        ref, hyp = split_words(reference), split_words(hypothesis or "")
        errors = edit_distance(ref, hyp)
        self.errors += errors
        self.reference_words += len(ref)
        self.sentences += 1
        self.sentences_right += errors == 0
        self.no_command += not hyp
        return errors

    @property
    def wer(self) -> float:
        return self.errors / self.reference_words if self.reference_words else 0.0

    @property
    def sentence_accuracy(self) -> float:
        return self.sentences_right / self.sentences if self.sentences else 0.0

    def summary(self) -> dict[str, Any]:
        return {"wer": round(100.0 * self.wer, 2), "sentence_accuracy": round(100.0 * self.sentence_accuracy, 2),
                "sentences": self.sentences, "reference_words": self.reference_words, "word_errors": self.errors,
                "no_command": self.no_command}
