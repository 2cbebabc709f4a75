"""A synthetic referring segmentation benchmark in the refer layout (``coupalign synth``).

Scenes of 3-12 coloured shapes on textured backgrounds with partial occlusion (``world``,
``render``), referring expressions of seven kinds whose single referent is checked (``expressions``),
and a writer of the refer layout (``writer``)::

    from coupalign_core.data.synthetic import generate
    summary = generate("data", seed=0, num_images=5000)
    ds = ReferDataset("data", "synthetic", "unc", "train", sentences="random")
"""

from .expressions import KINDS, resolve
from .writer import DEFAULT_IMAGE_SIZE, DEFAULT_NO_TARGET_FRACTION, generate, split_of

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_NO_TARGET_FRACTION", "KINDS", "generate", "resolve", "split_of"]
