"""Checkpoints are self-contained and written atomically; a killed write leaves nothing for long,
and a malformed file says what is wrong with it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coupalign_core.checkpoint import atomic_save, load_model, read_checkpoint, save_checkpoint
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_round_trip_rebuilds_the_same_model_without_its_sources(tmp_path, preset):
    cfg = CoupAlignConfig.preset(preset)
    torch.manual_seed(0)
    model = CoupAlign(cfg).eval()
    tok = build_tokenizer(cfg)
    path = save_checkpoint(tmp_path / "m.pt", model, tok, step=7)
    loaded, tok2, state = load_model(path)
    assert state["step"] == 7
    # the text encoder is rebuilt from the recorded architecture, not re-read from MiniLM's folder
    assert loaded.config.text_pretrained is False
    ids, mask = tok2(["the small green triangle"], cfg.max_tokens)
    assert (ids == tok(["the small green triangle"], cfg.max_tokens)[0]).all()
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    args = (x, torch.from_numpy(ids), torch.from_numpy(mask))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args).logits, model(*args).logits)


def test_foreign_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a CoupAlign checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt is not a torch checkpoint file"):
        read_checkpoint(tmp_path / "junk.pt")


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"v": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_export_weights_drops_training_state_and_still_loads(tmp_path):
    from coupalign_core.checkpoint import export_weights

    cfg = CoupAlignConfig.preset("tiny")
    model = CoupAlign(cfg).eval()
    tok = build_tokenizer(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 96, 96), *map(torch.from_numpy, tok(["a cup"], cfg.max_tokens))).logits.sum().backward()
    optimizer.step()
    src = save_checkpoint(tmp_path / "last.pt", model, tok, optimizer=optimizer.state_dict(), step=3)
    dst = export_weights(src, tmp_path / "release.safetensors", command="coupalign train ...")
    assert dst.stat().st_size < 0.5 * src.stat().st_size
    state = read_checkpoint(dst)
    assert "optimizer" not in state and state["step"] == 3
    assert state["provenance"]["command"] == "coupalign train ..."
    loaded, _, _ = load_model(dst)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


# ---- a write killed half-way -------------------------------------------------------------------------
KILLED_WRITE = """
import os, signal, sys
from coupalign_core.checkpoint import atomic_write

def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], write)
"""


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_the_next_write_removes_what_a_killed_write_left(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(run / "last.pt")], env=env)
    assert killed.returncode == -9
    (leftover,) = temp_files(run)
    assert leftover.startswith(".last.pt.")
    # The write was killed a minute ago. A write of a live process of this host (this one), one of
    # another host that is not old yet and a file that is not ours stay.
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
    writing = f".best.pt.{host}.{os.getpid()}.abc123_x.tmp"
    other_host = ".best.pt.otherhost.12345.k2j3h4g5.tmp"
    (run / writing).write_bytes(b"in progress")
    (run / other_host).write_bytes(b"maybe in progress")
    (run / ".notes.tmp").write_bytes(b"someone else's")
    a_minute_ago = time.time() - 60
    for name in (leftover, writing, other_host, ".notes.tmp"):
        os.utime(run / name, (a_minute_ago, a_minute_ago))
    atomic_save({"v": 1}, run / "best.pt")
    assert not (run / leftover).exists()
    assert temp_files(run) == sorted([writing, other_host, ".notes.tmp"])
    # Another host's leftover goes once it has not changed for long.
    an_hour_ago = time.time() - 3600
    os.utime(run / other_host, (an_hour_ago, an_hour_ago))
    atomic_save({"v": 2}, run / "best.pt")
    assert temp_files(run) == sorted([writing, ".notes.tmp"])


# ---- malformed checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state():
    cfg = CoupAlignConfig.preset("tiny")
    model = CoupAlign(cfg).eval()
    tok = build_tokenizer(cfg)
    return {"format": "coupalign-checkpoint", "version": 1, "config": cfg.to_dict(), "tokenizer": tok.to_state(),
            "model": dict(model.state_dict())}


def broken(state: dict, case: str) -> object:
    state = dict(state)
    if case.startswith("no "):
        del state[case[3:]]
    elif case == "config is a str":
        state["config"] = "tiny"
    elif case == "tokenizer is a list":
        state["tokenizer"] = ["[PAD]", "[CLS]"]
    elif case == "vocabulary lacks [UNK]":
        state["tokenizer"] = {"vocab": [t for t in state["tokenizer"]["vocab"] if t != "[UNK]"], "lowercase": True}
    elif case == "model is a list":
        state["model"] = list(state["model"].values())
    elif case == "weight is a str":
        state["model"] = {**state["model"], "seg_head.rho.0.0.weight": "zeros"}
    elif case == "step is a str":
        state["step"] = "100"
    elif case == "config has unknown fields":
        state["config"] = {**state["config"], "mixture_of_experts": 8}
    elif case == "config has a wrong value":
        state["config"] = {**state["config"], "image_size": "large"}
    elif case == "weight of another shape":
        state["model"] = {**state["model"], "seg_head.rho.0.0.weight": torch.zeros(3, 3)}
    elif case == "weight missing":
        state["model"] = dict(list(state["model"].items())[1:])
    elif case == "a list, not a dict":
        return [state]
    return state


@pytest.mark.parametrize("case, message", [
    ("no config", "lacks 'config'"),
    ("no tokenizer", "lacks 'tokenizer'"),
    ("no model", "lacks 'model'"),
    ("config is a str", "'config' is a str, not a dict"),
    ("tokenizer is a list", "'tokenizer' is a list, not a dict"),
    ("vocabulary lacks [UNK]", "tokenizer is invalid: vocabulary lacks the special token \\[UNK\\]"),
    ("model is a list", "'model' is a list, not a dict"),
    ("weight is a str", "'model' must map parameter names to tensors"),
    ("step is a str", "'step' is a str, not an int"),
    ("config has unknown fields", "config has fields this version of coupalign does not know: \\['mixture_of_e"),
    ("config has a wrong value", "config is invalid"),
    ("weight of another shape", "do not fit its own config: other shape \\['seg_head.rho.0.0.weight \\(3, 3\\)"),
    ("weight missing", "do not fit its own config: missing"),
    ("a list, not a dict", "holds a list, not a CoupAlign checkpoint"),
])
def test_a_malformed_checkpoint_says_what_is_wrong(tiny_state, tmp_path, case, message):
    path = tmp_path / "broken.pt"
    torch.save(broken(tiny_state, case), path)
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        load_model(path)


def test_a_truncated_checkpoint_says_so(tiny_state, tmp_path):
    whole = atomic_save(tiny_state, tmp_path / "whole.pt").read_bytes()
    for cut, name in ((len(whole) // 2, "half.pt"), (0, "empty.pt")):
        (tmp_path / name).write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=f"{name} is (truncated|empty)"):
            load_model(tmp_path / name)
