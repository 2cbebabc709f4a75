"""CoupAlign (paper section 3): one module per concept, assembled in ``modeling.py``."""

from .configuration import CoupAlignConfig
from .modeling import CoupAlign, CoupAlignOutput
from .tokenization import TextTokenizer, build_tokenizer

__all__ = ["CoupAlign", "CoupAlignConfig", "CoupAlignOutput", "TextTokenizer", "build_tokenizer"]
