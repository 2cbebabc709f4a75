"""Training engine: exact resume (crash and SIGTERM), DDP under torchrun (gloo), learning on a fixed
batch, atomic checkpoints, the paper configs and the schedule.

Everything runs the tiny preset on a refer-layout fixture written here (coloured squares, two
sentences per ref), so the file takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from coupalign_core.checkpoint import atomic_save, read_checkpoint, save_checkpoint
from coupalign_core.data import collate
from coupalign_core.training.config import Interval, TrainingConfig, apply_overrides, load_config_dict
from coupalign_core.training.schedule import PolyLR, no_decay_names, poly_lr
from coupalign_core.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def write_refer_fixture(root: Path, num_images: int = 5, size: int = 64, seed: int = 0) -> Path:
    """A refer-layout "synthetic" data set: two coloured squares per image, one ref per square,
    two sentences per ref; the first 3/5 of the images are train, the rest val."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images" / "synthetic"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "synthetic").mkdir(parents=True, exist_ok=True)
    images, anns, refs = [], [], []
    for i in range(num_images):
        image = np.full((size, size, 3), 110, np.uint8)
        for j, name in enumerate(rng.choice(list(COLORS), size=2, replace=False)):
            w = int(rng.integers(14, 24))
            x, y = (int(v) for v in rng.integers(0, size - w, size=2))
            image[y : y + w, x : x + w] = COLORS[name]
            ann_id = 2 * i + j
            anns.append({"id": ann_id, "image_id": i, "category_id": 1, "bbox": [x, y, w, w], "area": w * w,
                         "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + w, x, y + w]]})
            sentences = [{"sent_id": 10 * ann_id + k, "raw": t, "sent": t, "tokens": t.split()}
                         for k, t in enumerate([f"the {name} square", f"{name} block"])]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": i, "category_id": 1,
                         "split": "train" if i < num_images * 3 // 5 else "val",
                         "file_name": f"img_{i}_{ann_id}.png", "sent_ids": [s["sent_id"] for s in sentences],
                         "sentences": sentences})
        cv2.imwrite(str(image_dir / f"img_{i}.png"), image[:, :, ::-1])
        images.append({"id": i, "file_name": f"img_{i}.png", "height": size, "width": size})
    (root / "synthetic" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "square"}]}))
    (root / "synthetic" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_refer_fixture(tmp_path_factory.mktemp("refer"))  # 6 train refs, 4 val refs


def tiny_config(data_root: Path, **train) -> dict:
    """The raw YAML dict of a tiny run: 6 train refs at batch 2 = 3 steps per epoch."""
    # One thread: on a shared 2-core machine two spin-waiting OpenMP threads collapse (docs/training.md).
    t = dict(lr=1e-3, end_lr=1e-4, decay_steps=8, warmup_steps=1, max_steps=5, batch_size=2,
             clip_grad_norm=1.0, eval_every=3, checkpoint_every=2, log_every=1, overlay_samples=2, seed=3,
             num_threads=1)
    t.update(train)
    return {
        "model": {"preset": "tiny", "num_queries": 4, "decoder_layers": 1},
        "data": {"data_root": str(data_root), "dataset": "synthetic", "split_by": "unc", "num_workers": 0,
                 "val_max_samples": 4},
        "train": t,
    }


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"parameter {name} differs")


# ---- (a) resume -------------------------------------------------------------------------------------
def test_killed_and_resumed_run_matches_uninterrupted_run(data_root, tmp_path):
    from coupalign_core.cli.main import main

    # Uninterrupted: 5 steps (3 per epoch) through the CLI (YAML file, --output-dir).
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(data_root)))
    straight = tmp_path / "straight"
    assert main(["train", "--config", str(config_file), "--output-dir", str(straight)]) == 0
    reference = read_checkpoint(straight / "last.pt")
    assert (reference["step"], reference["epoch"], reference["step_in_epoch"]) == (5, 1, 2)

    # Interrupted twice: a crash at step 3 (no checkpoint written then: last.pt of step 2, in the
    # middle of epoch 0, is what survives), then SIGTERM at step 4 (a checkpoint is written at once,
    # in the middle of epoch 1), then resumed to the end.
    config = TrainingConfig.from_dict(tiny_config(data_root, overlay_samples=0))  # drawing changes nothing
    run = tmp_path / "interrupted"

    def crash_at_3(trainer, losses):
        if trainer.step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(config, run, step_callbacks=[crash_at_3]).fit()
    crashed = read_checkpoint(run / "last.pt")
    assert (crashed["step"], crashed["epoch"], crashed["step_in_epoch"]) == (2, 0, 2)

    def sigterm_at_4(trainer, losses):
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    result = Trainer(config, run, resume="auto", step_callbacks=[sigterm_at_4]).fit()
    assert result.stopped_by == "signal:SIGTERM" and result.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the trainer's handler is gone again
    stopped = read_checkpoint(run / "last.pt")
    assert (stopped["step"], stopped["epoch"], stopped["step_in_epoch"]) == (4, 1, 1)

    resumed = Trainer(config, run, resume=run / "last.pt")
    assert resumed.step == 4 and resumed.lr == pytest.approx(stopped["optimizer"]["param_groups"][0]["lr"])
    result = resumed.fit()
    assert result.step == 5 and result.stopped_by == "budget"

    final = read_checkpoint(run / "last.pt")
    assert_same_params(reference["model"], final["model"])
    assert final["optimizer"]["param_groups"][0]["lr"] == reference["optimizer"]["param_groups"][0]["lr"]
    assert final["scheduler"]["last_epoch"] == reference["scheduler"]["last_epoch"] == 5
    assert final["best_oiou"] == pytest.approx(reference["best_oiou"])
    # The metric log of the resumed run is the uninterrupted one's: same steps, same losses.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [(r["split"], r["step"]) for r in ref_rows]
    assert [r.get("loss") for r in rows] == pytest.approx([r.get("loss") for r in ref_rows], abs=1e-6)
    # Reports of the run: best checkpoint, curves, an overlay grid per evaluation, TensorBoard.
    for name in ("best.pt", "curves.png", "config.yaml", "overlays/step_0000003.png", "overlays/step_0000005.png"):
        assert (straight / name).is_file(), name
    assert any((straight / "tb").iterdir())


def test_resume_refuses_a_different_global_batch(data_root, tmp_path):
    config = TrainingConfig.from_dict(tiny_config(data_root, max_steps=1, eval_every=0, overlay_samples=0))
    Trainer(config, tmp_path).fit()
    other = TrainingConfig.from_dict(tiny_config(data_root, batch_size=1, eval_every=0))
    with pytest.raises(ValueError, match="global batch 2"):
        Trainer(other, tmp_path, resume=tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Trainer(config, tmp_path, resume=tmp_path / "missing.pt")


def test_a_run_starting_removes_the_temp_file_of_a_killed_checkpoint_write(data_root, tmp_path):
    """A kill during a checkpoint write leaves ``.last.pt.<host>.<pid>.<rand>.tmp``; the next start cleans it."""
    killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(killed.stdout)  # a process of this host that has exited
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    leftover = tmp_path / f".last.pt.{host}.{dead_pid}.k2j3h4g5.tmp"
    leftover.write_bytes(b"half a checkpoint")
    a_minute_ago = time.time() - 60
    os.utime(leftover, (a_minute_ago, a_minute_ago))
    config = TrainingConfig.from_dict(tiny_config(data_root, max_steps=1, eval_every=0, overlay_samples=0))
    Trainer(config, tmp_path)
    assert not leftover.exists()


def test_init_from_takes_weights_only_and_refuses_another_architecture(data_root, tmp_path):
    first = TrainingConfig.from_dict(tiny_config(data_root, max_steps=2, eval_every=0, overlay_samples=0))
    Trainer(first, tmp_path / "stage1").fit()
    stage1 = read_checkpoint(tmp_path / "stage1" / "last.pt")

    # Stage 2 (a different loss weight is allowed): starts from stage 1's weights at step 0, with a
    # fresh optimizer and the warm-up of its own schedule.
    raw = tiny_config(data_root, max_steps=1, eval_every=0, overlay_samples=0,
                      init_from=str(tmp_path / "stage1" / "last.pt"))
    raw["model"]["dice_loss_weight"] = 1.0
    second = Trainer(TrainingConfig.from_dict(raw), tmp_path / "stage2")
    assert second.step == 0 and not second.optimizer.state
    assert second.scheduler.last_epoch == 0  # its own schedule, from the start
    assert_same_params(stage1["model"], {k: v for k, v in second.model.state_dict().items()})
    second.fit()
    moved = read_checkpoint(tmp_path / "stage2" / "last.pt")["model"]
    assert any(not torch.equal(moved[k], stage1["model"][k]) for k in moved)

    # A higher-resolution stage: only the position tables change shape, and they are resampled.
    sharper = tiny_config(data_root, max_steps=1, eval_every=0, overlay_samples=0,
                          init_from=str(tmp_path / "stage1" / "last.pt"))
    sharper["model"]["image_size"] = 128
    at_128 = Trainer(TrainingConfig.from_dict(sharper), tmp_path / "stage2_128").model.state_dict()
    assert at_128["image_encoder.abs_pos_embed.weight"].shape[-2:] == (32, 32)
    same_shape = [k for k in at_128 if at_128[k].shape == stage1["model"][k].shape]
    assert len(same_shape) == len(at_128) - 4  # Swin's abs table, stage 4's bias table, two 3x3 -> 4x4 grids
    assert_same_params({k: stage1["model"][k] for k in same_shape}, {k: at_128[k] for k in same_shape})

    for field, value in (("num_queries", 5), ("window_size", 4)):  # another window reshapes only Swin's bias tables
        other = tiny_config(data_root, max_steps=1, init_from=str(tmp_path / "stage1" / "last.pt"))
        other["model"][field] = value
        with pytest.raises(ValueError, match="not this config's architecture"):
            Trainer(TrainingConfig.from_dict(other), tmp_path / "stage3")


# ---- (b) torchrun -------------------------------------------------------------------------------------
RANK_SCRIPT = """
import hashlib, json, os, sys
import torch
from coupalign_core.training.config import TrainingConfig
from coupalign_core.training.trainer import Trainer

config = TrainingConfig.from_dict(json.loads(sys.argv[1]))
out = sys.argv[2]
seen = []
def record(trainer, losses):
    seen.append(losses["loss"])
trainer = Trainer(config, out, step_callbacks=[record])
result = trainer.fit()
digest = hashlib.sha256()
for name, p in sorted(trainer.model.state_dict().items()):
    digest.update(name.encode()); digest.update(p.detach().cpu().numpy().tobytes())
rank = trainer.ctx.rank
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"world": trainer.ctx.world_size, "backend": trainer.ctx.backend, "step": result.step,
               "digest": digest.hexdigest(), "losses": seen, "batch": trainer.batch_size,
               "oIoU": result.last_metrics.get("oIoU")}, f)
torch.distributed.destroy_process_group()
"""


def test_torchrun_two_cpu_processes_keep_identical_parameters(data_root, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    # global batch 4 = 1 per process x 2 processes x 2 accumulation steps; 3 steps (one per epoch)
    # with an evaluation and a checkpoint.
    config = tiny_config(data_root, batch_size=None, global_batch_size=4, grad_accum=2, max_steps=3,
                         eval_every=3, checkpoint_every=2)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(config), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "global batch size: 4 (= 1 per process x 2 processes x 2 accumulation steps)" in proc.stdout
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert (r["world"], r["backend"], r["step"], r["batch"]) == (2, "gloo", 3, 1)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trained on its own half of the batch
    assert ranks[0]["oIoU"] == ranks[1]["oIoU"] is not None  # validation reduced across ranks
    # Only rank 0 writes the run folder; its checkpoint holds the shared weights and both RNG states.
    state = read_checkpoint(out / "last.pt")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    digest = hashlib.sha256()
    for name, p in sorted(state["model"].items()):
        digest.update(name.encode())
        digest.update(p.numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["digest"]


# ---- (c) learning ---------------------------------------------------------------------------------------
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(data_root, tmp_path):
    config = TrainingConfig.from_dict(tiny_config(data_root, lr=1e-3, warmup_steps=0, decay_steps=100,
                                                  max_steps=100, grad_accum=2, batch_size=1))
    trainer = Trainer(config, tmp_path)
    micro = [collate([trainer.train_set[0]]), collate([trainer.train_set[1]])]  # 2 accumulated halves
    losses = [trainer.train_step(micro)["loss"] for _ in range(12)]
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    assert trainer.scheduler.last_epoch == 12


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_learn(data_root, tmp_path, amp):
    # Meant for GPUs; torch autocasts on the CPU too, which exercises the same code path here:
    # autocast forward, fp16 GradScaler (unscale, clip, skip on overflow) with the fused AdamW.
    config = TrainingConfig.from_dict(tiny_config(data_root, amp=amp, warmup_steps=0, decay_steps=100,
                                                  max_steps=100))
    trainer = Trainer(config, tmp_path)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    batch = collate([trainer.train_set[0], trainer.train_set[1]])
    losses = [trainer.train_step([batch])["loss"] for _ in range(20)]  # fp16: the first ~4 overflow and are skipped
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_auto_amp_and_threads_are_decided_here_logged_and_stored(data_root, tmp_path, caplog):
    from coupalign_core.machine import choose_amp, choose_num_threads

    config = TrainingConfig.from_dict(tiny_config(data_root, amp="auto", num_threads="auto", max_steps=1,
                                                  eval_every=0, overlay_samples=0))
    assert (config.train.amp, config.train.num_threads) == ("auto", "auto")
    with caplog.at_level("INFO", logger="coupalign_core.training.trainer"):
        trainer = Trainer(config, tmp_path)
    amp, amp_reason = choose_amp("cpu")
    assert trainer.runtime["amp"] == amp and trainer.amp_dtype == (torch.bfloat16 if amp == "bf16" else None)
    assert f"train.amp=auto: {amp} ({amp_reason})" in caplog.text
    threads = trainer.runtime["num_threads"]
    assert 1 <= threads <= choose_num_threads(load_1min=0.0)[0] and torch.get_num_threads() == threads
    assert f"train.num_threads=auto: {threads} (" in caplog.text and "1-min load" in caplog.text
    trainer.fit()
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["runtime"]["amp"] == amp and state["runtime"]["num_threads"] == threads
    assert state["train_config"]["train"]["amp"] == "auto"  # the config keeps the intent


def test_bad_num_threads_is_refused(data_root):
    for bad in (0, "two", True, 1.5):
        with pytest.raises(ValueError, match="train.num_threads must be an integer >= 1, 'auto' or null"):
            TrainingConfig.from_dict(tiny_config(data_root, num_threads=bad))


# ---- (d) atomic checkpoints ------------------------------------------------------------------------------
class ExplodesWhilePickled:
    def __reduce__(self):
        raise OSError("disk went away mid-write")


def test_a_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
    from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

    config = CoupAlignConfig.preset("tiny", num_queries=4, decoder_layers=1)
    model, tokenizer = CoupAlign(config), build_tokenizer(config)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, tokenizer, step=1)
    before = path.read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    # The payload (model weights first) is partly written when pickling fails (save_checkpoint itself
    # refuses such a field before writing: this is the write underneath it).
    with pytest.raises(OSError, match="mid-write"):
        atomic_save({"model": model.state_dict(), "step": 2, "extra": ExplodesWhilePickled()}, path)
    assert path.read_bytes() == before
    assert read_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


# ---- (e) configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dataset,split_by", [
    ("refcoco_paper", "refcoco", "unc"),
    ("refcocoplus_paper", "refcoco+", "unc"),
    ("refcocog_umd_paper", "refcocog", "umd"),
    ("refcocog_google_paper", "refcocog", "google"),
])
def test_paper_configs_hold_the_papers_numbers(name, dataset, split_by):
    config = TrainingConfig.load(REPO / "training" / "configs" / f"{name}.yaml")
    t, m = config.train, config.model
    assert (config.data.dataset, config.data.split_by) == (dataset, split_by)
    assert t.optimizer == "adamw" and t.weight_decay == 0.01
    assert (t.lr, t.end_lr, t.decay_epochs, t.epochs) == (3e-5, 1.5e-5, 25, 50)
    assert t.global_batch_size == 16 and t.per_process_batch(8) == 2 and t.per_process_batch(1) == 16
    assert (m.image_size, m.aux_loss_weight, m.max_tokens, m.num_queries) == (448, 0.1, 30, 100)
    assert m.image_encoder == "swin_base_patch4_window12_384" and "22k" in m.image_pretrained
    assert m.text_pretrained and m.text_encoder == "bert-base-uncased"
    assert t.eval_every == Interval(1, "epoch")


def test_synthetic_configs_parse():
    config = TrainingConfig.load(REPO / "training" / "configs" / "synthetic_cpu.yaml")
    assert config.model.image_size == 96 and config.train.max_minutes is not None
    assert config.data.dataset == "synthetic" and config.data.synthesize
    names = ("synthetic_shipped", "synthetic_shipped_stage2", "synthetic_shipped_stage3_gpu",
             "synthetic_shipped_stage4", "synthetic_shipped_stage5", "synthetic_shipped_stage6")
    stages = [TrainingConfig.load(REPO / "training" / "configs" / f"{name}.yaml") for name in names]
    arch = lambda m: {k: v for k, v in m.to_dict().items() if not k.endswith("loss_weight")}  # noqa: E731
    # each stage starts from the previous one's last checkpoint, with the same architecture;
    # stage 3 (GPU) moves from 96² to 128², the only model change along the chain
    for previous, stage in zip(stages, stages[1:]):
        assert stage.train.init_from == f"{previous.train.output_dir}/last.pt"
        assert {**arch(stage.model), "image_size": 0} == {**arch(previous.model), "image_size": 0}
    assert [s.model.image_size for s in stages] == [96, 96, 128, 128, 128, 128]
    # every stage sees a world of its own, and none is the scoring world (seed 777)
    seeds = [s.data.synthesize["seed"] for s in stages] + [777]
    assert len(set(seeds)) == len(seeds)


def test_every_shipped_config_resolves_through_its_base_chain():
    configs = REPO / "training" / "configs"
    bases = {p.name: yaml.safe_load(p.read_text()).get("base") for p in sorted(configs.glob("*.yaml"))}
    # the RefCOCO+/G-Ref configs state only what differs from RefCOCO's; each shipped stage from the one before
    assert bases == {
        "refcoco_paper.yaml": None, "refcocoplus_paper.yaml": "refcoco_paper.yaml",
        "refcocog_umd_paper.yaml": "refcoco_paper.yaml", "refcocog_google_paper.yaml": "refcoco_paper.yaml",
        "synthetic_cpu.yaml": None, "synthetic_shipped.yaml": None,
        "synthetic_shipped_stage2.yaml": "synthetic_shipped.yaml",
        "synthetic_shipped_stage3_gpu.yaml": "synthetic_shipped_stage2.yaml",
        "synthetic_shipped_stage4.yaml": "synthetic_shipped_stage3_gpu.yaml",
        "synthetic_shipped_stage5.yaml": "synthetic_shipped_stage4.yaml",
        "synthetic_shipped_stage6.yaml": "synthetic_shipped_stage5.yaml",
        "tabletop_stage1.yaml": "synthetic_shipped_stage6.yaml",
    }
    loaded = {name: TrainingConfig.load(configs / name) for name in bases}
    plus = loaded["refcocoplus_paper.yaml"]
    assert (plus.data.dataset, plus.data.split_by) == ("refcoco+", "unc")
    assert plus.train.output_dir == "runs/refcocoplus_paper"
    assert plus.model == loaded["refcoco_paper.yaml"].model and plus.train.amp == "bf16"
    # mappings merge through the chain: stage 2 inherits stage 1's world size, stage 5 stage 4's workers
    assert loaded["synthetic_shipped_stage2.yaml"].data.synthesize == {
        "seed": 2, "num_images": 8000, "no_target_fraction": 0.25}
    assert loaded["synthetic_shipped_stage5.yaml"].data.synthesize == {
        "seed": 5, "num_images": 24000, "no_target_fraction": 0.25, "workers": 2}
    # the tabletop model starts from the shipped release (a file in the repository, not a run folder)
    table = loaded["tabletop_stage1.yaml"]
    assert (table.data.dataset, table.model.image_size) == ("tabletop", 128)
    assert table.train.init_from == "models/coupalign-synthetic.safetensors"
    # the recorded stages keep the precision and threads they ran with; new configs let the machine decide
    assert (table.train.amp, table.train.num_threads) == ("auto", "auto")
    assert (loaded["synthetic_cpu.yaml"].train.amp, loaded["synthetic_cpu.yaml"].train.num_threads) == ("auto", "auto")
    # a null in the child overrides its base: stage 3 (GPU) drops stage 2's one CPU thread, stage 4 restores it
    assert [loaded[f"synthetic_shipped_{s}.yaml"].train.num_threads for s in ("stage2", "stage3_gpu", "stage4")] \
        == [1, None, 1]
    stage5 = loaded["synthetic_shipped_stage5.yaml"]
    assert (stage5.model.image_size, stage5.model.dice_loss_weight, stage5.train.batch_size) == (128, 1.0, 16)
    assert (stage5.train.lr, stage5.train.end_lr, stage5.train.amp, stage5.train.clip_grad_norm) == (
        1.5e-4, 1e-5, "bf16", 1.0)


def test_base_merges_mappings_and_replaces_scalars_lists_and_null(data_root, tmp_path):
    root = tiny_config(data_root, betas=[0.8, 0.99], clip_grad_norm=1.0)
    (tmp_path / "root.yaml").write_text(yaml.safe_dump(root))
    (tmp_path / "mid.yaml").write_text(yaml.safe_dump(
        {"base": "root.yaml", "model": {"num_queries": 6}, "train": {"lr": 5e-4, "betas": [0.7]}}))
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"  # a base path is relative to the file that names it
    child.write_text(yaml.safe_dump({"base": "../mid.yaml", "data": {"val_split": None},
                                     "train": {"betas": [0.9, 0.95], "clip_grad_norm": None}}))
    config = TrainingConfig.load(child, ["train.max_steps=7"])
    assert config.model.num_queries == 6 and config.model.decoder_layers == root["model"]["decoder_layers"]
    assert config.train.lr == 5e-4 and config.train.betas == (0.9, 0.95)  # lists replace, never concatenate
    assert config.train.clip_grad_norm is None and config.data.val_split is None  # null overrides the base
    assert config.data.data_root == root["data"]["data_root"] and config.train.max_steps == 7  # --set comes last
    assert load_config_dict(tmp_path / "mid.yaml")["train"]["betas"] == [0.7]  # not merged element-wise
    assert "base" not in config.to_dict()


def test_bad_base_chains_are_refused_with_clear_errors(data_root, tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"base cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        TrainingConfig.load(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: ./self.yaml\n")
    with pytest.raises(ValueError, match="base cycle"):
        TrainingConfig.load(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\ntrain: {lr: 1.0e-3}\n")
    with pytest.raises(FileNotFoundError, match=r"orphan\.yaml: base .*nowhere\.yaml does not exist"):
        TrainingConfig.load(tmp_path / "orphan.yaml")
    (tmp_path / "listed.yaml").write_text("base: [a.yaml, b.yaml]\n")
    with pytest.raises(ValueError, match="'base:' must be the path of another training config"):
        TrainingConfig.load(tmp_path / "listed.yaml")
    # unknown keys are still refused, in the child and in a base
    (tmp_path / "root.yaml").write_text(yaml.safe_dump(tiny_config(data_root)))
    (tmp_path / "typo.yaml").write_text("base: root.yaml\ntrain: {learning_rate: 1.0e-3}\n")
    with pytest.raises(ValueError, match=r"unknown keys in 'train:': \['learning_rate'\]"):
        TrainingConfig.load(tmp_path / "typo.yaml")
    (tmp_path / "bad_root.yaml").write_text(yaml.safe_dump({**tiny_config(data_root), "optim": {}}))
    (tmp_path / "on_bad_root.yaml").write_text("base: bad_root.yaml\n")
    with pytest.raises(ValueError, match=r"unknown top-level sections \['optim'\]"):
        TrainingConfig.load(tmp_path / "on_bad_root.yaml")


def test_overrides_and_bad_configs(data_root):
    raw = tiny_config(data_root)
    out = apply_overrides(raw, ["train.lr=3e-4", "model.num_queries=8", "data.val_split=null"])
    config = TrainingConfig.from_dict(out)
    assert config.train.lr == 3e-4 and config.model.num_queries == 8 and config.data.val_split is None
    assert raw["train"]["lr"] == 1e-3  # the original is untouched
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(raw, ["train.lr"])
    with pytest.raises(ValueError, match="unknown keys in 'train:'"):
        TrainingConfig.from_dict(apply_overrides(raw, ["train.learning_rate=1"]))
    with pytest.raises(ValueError, match="budget"):
        TrainingConfig.from_dict(apply_overrides(raw, ["train.max_steps=null"]))
    with pytest.raises(ValueError, match="not divisible"):
        TrainingConfig.from_dict(apply_overrides(raw, ["train.global_batch_size=6"])).train.per_process_batch(4)
    assert Interval.parse("2 epochs", "x") == Interval(2, "epoch") and Interval.parse(500, "x") == Interval(500)
    with pytest.raises(ValueError, match="eval_every"):
        Interval.parse("often", "eval_every")


# ---- schedule ----------------------------------------------------------------------------------------
def test_poly_schedule_per_iteration():
    # The paper's: 3e-5 -> 1.5e-5 over 25 epochs, then flat.
    assert poly_lr(0, 3e-5, 1.5e-5, 2500) == pytest.approx(3e-5)
    assert poly_lr(1250, 3e-5, 1.5e-5, 2500) == pytest.approx(1.5e-5 + 1.5e-5 * 0.5**0.9)
    assert poly_lr(2500, 3e-5, 1.5e-5, 2500) == pytest.approx(1.5e-5)
    assert poly_lr(4000, 3e-5, 1.5e-5, 2500) == pytest.approx(1.5e-5)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    sched = PolyLR(opt, 1.5e-5, 10)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([poly_lr(t, 3e-5, 1.5e-5, 10) for t in range(12)])


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    from coupalign_core.model import CoupAlign, CoupAlignConfig

    model = CoupAlign(CoupAlignConfig.preset("tiny", num_queries=4, decoder_layers=1))
    skip = no_decay_names(model)
    params = dict(model.named_parameters())
    assert all(params[n].ndim <= 1 for n in skip if "norm" in n.lower() or n.endswith("bias"))
    for must in ("relative_position_bias_table", "position_embeddings.weight", "fusion.pos_embed.weight",
                 "mask_generator.memory_pos.weight", "mask_generator.queries", "sma.logit_scale"):
        assert any(must in n for n in skip), must
    decayed = set(params) - skip
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in decayed
    assert all(params[n].ndim >= 2 for n in decayed)
