"""Test-wide settings: never reach for a model hub (this machine and CI have none), and keep ONNX
exports and TensorRT engines that tests make out of the user's cache."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["COUPALIGN_CACHE_DIR"] = tempfile.mkdtemp(prefix="coupalign-test-cache-")
