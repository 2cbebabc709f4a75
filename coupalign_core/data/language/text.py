"""The one word split every part of the language pipeline shares (generator, phrasing, the gate)."""

from __future__ import annotations


def normalise(text: str) -> str:
    """The refer ``sent`` form: lower case, every character that is neither a letter/digit nor a
    space removed, single spaces (the synthetic generator's own ``normalise``)."""
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())


def words(text: str) -> list[str]:
    """``normalise(text).split()``: punctuation, emoji and zero-width or control characters give no word."""
    return normalise(text).split()
