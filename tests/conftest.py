"""Test-wide settings: never reach for a model hub (this machine and CI have none), and keep ONNX
exports and TensorRT engines that tests make out of the user's cache."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_cache = tempfile.mkdtemp(prefix="coupalign-test-cache-")
os.environ["COUPALIGN_CACHE_DIR"] = _cache
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
