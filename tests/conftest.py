"""Test-wide settings: never reach for a model hub (this machine and CI have none), and keep ONNX
exports and TensorRT engines that tests make out of the user's cache, and leave torch's thread count
as each test found it."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_cache = tempfile.mkdtemp(prefix="coupalign-test-cache-")
os.environ["COUPALIGN_CACHE_DIR"] = _cache
atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The trainer and the CPU backends set torch's (process-wide) thread count: undo it after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
