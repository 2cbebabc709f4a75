"""Fixtures of the ROS 2 tests; ROS itself is imported only inside them (CI without ROS collects
this folder and skips every module)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random CoupAlign (seed 0) for the node: CPU, torch backend, seconds to load."""
    import torch

    from coupalign_core.checkpoint import save_checkpoint
    from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

    config = CoupAlignConfig.preset("tiny")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", CoupAlign(config).eval(),
                           build_tokenizer(config))


@pytest.fixture
def client():
    from ros_support import Client

    c = Client()
    yield c
    c.close()
