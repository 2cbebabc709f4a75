"""A rendered RGB-D tabletop world in the refer layout (``coupalign sim``).

Tables seen by a robot's head or wrist camera with 3-12 objects of named categories, colours and
sizes, standing, stacked or in a tray (``world``), rendered by pybullet with exact depth, instance
masks and CameraInfo intrinsics (``render``), described by the 2D world's seven kinds of referring
expression plus three that need depth (``expressions``), and written in the refer layout with depth
images and 3D ground truth beside it (``writer``)::

    from coupalign_core.data.tabletop import generate
    summary = generate("data", seed=0, num_images=2000)
    ds = ReferDataset("data", "tabletop", "unc", "train", sentences="random")
"""

from .expressions import KINDS, TableView, resolve
from .writer import DEFAULT_IMAGE_SIZE, DEFAULT_NO_TARGET_FRACTION, generate, load_depth, split_of

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_NO_TARGET_FRACTION", "KINDS", "TableView", "generate", "load_depth",
           "resolve", "split_of"]
