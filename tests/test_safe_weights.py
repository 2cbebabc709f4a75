"""Model files cannot run code: released weights are safetensors, training checkpoints load with
``torch.load(weights_only=True)``, and a file whose unpickling would run code is refused by every
public entry point with a message that says why and how to convert a trusted file."""

from __future__ import annotations

import json
import pathlib
import struct

import cv2
import numpy as np
import pytest
import torch
import yaml

from coupalign_core.checkpoint import export_weights, load_model, read_checkpoint, save_checkpoint
from coupalign_core.cli.main import main
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
RELEASE_KEYS = {"format", "version", "config", "tokenizer", "training", "provenance"}


class RunsCode:
    """Unpickling this writes ``marker``: what a crafted checkpoint could do with any code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture(scope="module")
def tiny():
    cfg = CoupAlignConfig.preset("tiny")
    torch.manual_seed(0)
    return CoupAlign(cfg).eval(), build_tokenizer(cfg)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A small synthetic world, so that the data never is why a verb stops."""
    from coupalign_core.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, num_images=20, progress=False)
    return root


def checkpoint_dict(model, tokenizer, **extra):
    state = {"format": "coupalign-checkpoint", "version": 1, "config": model.config.to_dict(),
             "tokenizer": tokenizer.to_state(), "model": dict(model.state_dict())}
    state.update(extra)
    return state


@pytest.fixture
def crafted(tiny, tmp_path):
    """A complete, valid checkpoint plus one field whose unpickling writes the marker file."""
    model, tok = tiny
    marker = tmp_path / "MARKER"
    path = tmp_path / "crafted.pt"
    torch.save(checkpoint_dict(model, tok, step=3, optimizer={}, provenance=RunsCode(marker)), path)
    return path, marker


def assert_refused(message: str, path: pathlib.Path) -> None:
    assert f"refusing to load {path}" in message
    assert "can run any code" in message and "builtins.exec" in message
    assert f"coupalign export --checkpoint {path} --format weights --trust-pickle" in message


def test_the_crafted_file_really_runs_code_when_unpickled(tiny, tmp_path):
    """The control: what the entry points below refuse would have run."""
    model, tok = tiny
    marker = tmp_path / "MARKER"
    torch.save(checkpoint_dict(model, tok, provenance=RunsCode(marker)), tmp_path / "crafted.pt")
    torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_python_api_refuses_a_crafted_checkpoint(crafted):
    from coupalign_core.inference import Segmenter
    from coupalign_core.runtime.loading import ModelLoadError, load_segmenter

    path, marker = crafted
    for load in (read_checkpoint, load_model, lambda p: Segmenter.from_checkpoint(p, backend="torch", device="cpu")):
        with pytest.raises(ValueError) as refused:
            load(path)
        assert_refused(str(refused.value), path)
    with pytest.raises(ModelLoadError) as refused_node:  # the ROS node's loader
        load_segmenter(str(path), backend="torch", device="cpu")
    assert_refused(str(refused_node.value), path)
    assert not marker.exists()


def test_every_verb_refuses_a_crafted_checkpoint(crafted, synth_root, tmp_path, capsys):
    path, marker = crafted
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 120, np.uint8))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"preset": "tiny"},
        "data": {"data_root": str(synth_root), "dataset": "synthetic", "split_by": "unc", "num_workers": 0},
        "train": {"max_steps": 1, "batch_size": 2, "eval_every": 0, "num_threads": 1},
    }))
    verbs = {
        "eval": ["eval", "--checkpoint", str(path), "--data-root", str(synth_root), "--splits", "val",
                 "--num-workers", "0", "--device", "cpu", "--no-progress"],
        "export weights": ["export", "--checkpoint", str(path), "--format", "weights",
                           "--out", str(tmp_path / "out.safetensors")],
        "export onnx": ["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(tmp_path / "out.onnx")],
        "segment": ["segment", "--checkpoint", str(path), "--image", str(image), "--text", "the red cube",
                    "--backend", "torch", "--device", "cpu"],
        "train --resume CKPT": ["train", "--resume", str(path)],
        "train --config --resume CKPT": ["train", "--config", str(config), "--resume", str(path),
                                         "--output-dir", str(tmp_path / "run_resume")],
        "train.init_from": ["train", "--config", str(config), "--set", f"train.init_from={path}",
                            "--output-dir", str(tmp_path / "run_init")],
    }
    for name, argv in verbs.items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, name
        assert_refused(captured.err, path)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "out.onnx").exists()
    assert not marker.exists()


def test_trainer_refuses_a_crafted_checkpoint_to_resume_or_start_from(crafted, synth_root, tmp_path):
    from coupalign_core.training.config import TrainingConfig
    from coupalign_core.training.trainer import Trainer

    path, marker = crafted
    raw = {"model": {"preset": "tiny"},
           "data": {"data_root": str(synth_root), "dataset": "synthetic", "split_by": "unc", "num_workers": 0},
           "train": {"max_steps": 1, "batch_size": 2, "eval_every": 0, "num_threads": 1}}
    with pytest.raises(ValueError) as refused:
        Trainer(TrainingConfig.from_dict(raw), tmp_path / "resume", resume=path)
    assert_refused(str(refused.value), path)
    raw["train"]["init_from"] = str(path)
    with pytest.raises(ValueError) as refused:
        Trainer(TrainingConfig.from_dict(raw), tmp_path / "init")
    assert_refused(str(refused.value), path)
    assert not marker.exists()


def test_a_trusted_pickled_file_converts_only_behind_the_flag(tiny, tmp_path, capsys):
    model, tok = tiny
    old = tmp_path / "old.pt"  # benign, but only arbitrary unpickling reads a PurePosixPath
    torch.save(checkpoint_dict(model, tok, step=9, provenance={"source": pathlib.PurePosixPath("runs/a/last.pt")}),
               old)
    new = tmp_path / "old.safetensors"
    assert main(["export", "--checkpoint", str(old), "--format", "weights", "--out", str(new)]) == 2
    assert "pathlib" in capsys.readouterr().err and not new.exists()
    assert main(["export", "--checkpoint", str(old), "--format", "onnx", "--trust-pickle",
                 "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--format weights only" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(old), "--format", "weights", "--trust-pickle", "--out", str(new)]) == 0
    state = read_checkpoint(new)
    assert state["step"] == 9 and state["provenance"] == {"source": "runs/a/last.pt"}
    loaded, _, _ = load_model(new)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_release_is_safetensors_with_json_metadata(tiny, tmp_path, capsys):
    from safetensors import safe_open

    from coupalign_core.inference import Segmenter

    model, tok = tiny
    ckpt = save_checkpoint(tmp_path / "last.pt", model, tok, step=7, epoch=1, optimizer={"state": {}},
                           val_metrics={"oIoU": 12.5})
    out = tmp_path / "release.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "weights", "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
        names = set(f.keys())
    assert set(metadata) == RELEASE_KEYS
    assert metadata["format"] == "coupalign-weights" and metadata["version"] == "1"
    assert CoupAlignConfig.from_dict(json.loads(metadata["config"])) == model.config
    assert json.loads(metadata["tokenizer"]) == tok.to_state()
    assert json.loads(metadata["training"]) == {"step": 7, "epoch": 1, "val_metrics": {"oIoU": 12.5}}
    assert json.loads(metadata["provenance"]) == {"source": str(ckpt)}
    assert names == set(model.state_dict())

    state = read_checkpoint(out)
    assert "optimizer" not in state and state["step"] == 7
    loaded, tok2, _ = load_model(out)
    assert tok2.to_state() == tok.to_state()
    for name, value in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == value.dtype and torch.equal(loaded.state_dict()[name], value)
    frame = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    a = Segmenter.from_checkpoint(out, backend="torch", device="cpu", threshold=0.0)(frame, "the cup")
    b = Segmenter(model, tok, backend="torch", device="cpu", threshold=0.0)(frame, "the cup")
    assert a.score == b.score and (a.mask == b.mask).all()

    assert main(["export", "--checkpoint", str(ckpt), "--format", "weights", "--out", str(tmp_path / "r.pt")]) == 2
    assert "name --out *.safetensors" in capsys.readouterr().err


def test_the_shipped_model_is_a_release():
    assert not list((REPO / "models").glob("*.pt"))
    state = read_checkpoint(REPO / "models" / "coupalign-synthetic.safetensors")
    assert state["format"] == "coupalign-weights" and state["config"]["presence_head"] is True
    assert state["provenance"]["source"] == "runs/synthetic_shipped_stage6/last.pt"
    assert state["grounding_vocabulary"]["words"]  # the gate travels with the release


def test_training_checkpoints_need_no_allow_list(tiny, tmp_path):
    from coupalign_core.training.trainer import rng_state

    model, tok = tiny
    path = save_checkpoint(tmp_path / "last.pt", model, tok, rng=[rng_state()], step=1)
    state = torch.load(path, weights_only=True)  # plain torch, no allow-list
    assert state["step"] == 1 and isinstance(state["rng"][0]["numpy"][1], list)


def test_save_checkpoint_refuses_what_weights_only_cannot_read(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(TypeError, match=r"\['val_metrics'\]\['oIoU'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "last.pt", model, tok, val_metrics={"oIoU": np.float64(1.0)})
    assert not (tmp_path / "last.pt").exists()


def test_checkpoints_of_the_previous_trainer_still_resume(tiny, tmp_path):
    """Their NumPy RNG state is an array: the one allow-listed object."""
    from coupalign_core.training.trainer import set_rng_state

    model, tok = tiny
    np.random.seed(11)
    rng = {"python": (3, tuple(range(624)) + (624,), None), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    expected = np.random.rand(3)
    torch.save(checkpoint_dict(model, tok, rng=[rng], step=2), tmp_path / "old.pt")
    state = read_checkpoint(tmp_path / "old.pt")
    np.random.seed(0)
    set_rng_state(state["rng"][0])
    assert (np.random.rand(3) == expected).all()


# ---- crafted and broken safetensors -----------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tiny, tmp_path_factory):
    model, tok = tiny
    folder = tmp_path_factory.mktemp("release")
    return export_weights(save_checkpoint(folder / "last.pt", model, tok), folder / "good.safetensors")


def rewritten(release: pathlib.Path, path: pathlib.Path, drop_tensor: bool = False, **metadata) -> pathlib.Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(release), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if drop_tensor:
        tensors.pop(sorted(tensors)[0])
    meta.update(metadata)
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if v is not None})
    return path


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a valid safetensors file"),
    ("huge header", "not a valid safetensors file"),
    ("truncated", "not a valid safetensors file"),
    ("foreign", "not CoupAlign weights"),
    ("newer", "reads up to 1"),
    ("config not json", "metadata 'config' is not valid JSON"),
    ("no tokenizer", "lacks 'tokenizer'"),
    ("bad vocabulary", "tokenizer's 'vocab' must be a non-empty list"),
    ("missing tensor", "do not fit its own config: missing"),
])
def test_a_broken_or_crafted_release_is_refused_clearly(release, tmp_path, case, message):
    from coupalign_core.inference import Segmenter

    path = tmp_path / "model.safetensors"
    if case == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    elif case == "huge header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    elif case == "truncated":
        path.write_bytes(release.read_bytes()[:-100])
    elif case == "foreign":
        rewritten(release, path, format=None)
    elif case == "newer":
        rewritten(release, path, version="2")
    elif case == "config not json":
        rewritten(release, path, config="{'image_size': 96")
    elif case == "no tokenizer":
        rewritten(release, path, tokenizer=None)
    elif case == "bad vocabulary":
        rewritten(release, path, tokenizer=json.dumps({"vocab": "abc"}))
    elif case == "missing tensor":
        rewritten(release, path, drop_tensor=True)
    for load in (read_checkpoint, lambda p: Segmenter.from_checkpoint(p, backend="torch", device="cpu")):
        with pytest.raises(ValueError, match=message) as refused:
            load(path)
        assert str(path) in str(refused.value)
