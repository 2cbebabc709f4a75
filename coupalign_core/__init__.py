"""CoupAlign referring image segmentation in PyTorch (no ROS imports anywhere in this package)."""

__version__ = "0.1.0"
