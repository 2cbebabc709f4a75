"""Checkpoints are self-contained and written atomically."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="could not be read"):
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
    dst = export_weights(src, tmp_path / "release.pt", command="coupalign train ...")
    assert dst.stat().st_size < 0.5 * src.stat().st_size
    state = read_checkpoint(dst)
    assert "optimizer" not in state and state["step"] == 3
    assert state["provenance"]["command"] == "coupalign train ..."
    loaded, _, _ = load_model(dst)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)
