"""Presence that knows what it does not know, and phrasing that does not change meaning (issue 13).

(a) the grounding-vocabulary gate and ``found`` in the Segmenter, (b) command phrasing, (c) out-of-domain
negatives in the generator, (d) the vocabulary's way from training data to checkpoint, release and
Segmenter, (e) the stage-6 config.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from coupalign_core.checkpoint import export_weights, read_checkpoint, save_checkpoint
from coupalign_core.data import ReferDataset
from coupalign_core.data.language import (
    HELD_OUT_WORDS,
    NEGATIVE_KINDS,
    TRAINING_WORDS,
    LanguageAugmentation,
    make_negative,
    phrase,
    words,
)
from coupalign_core.data.language.augment import OUT_OF_DOMAIN_KIND
from coupalign_core.data.refer import load_refer_refs
from coupalign_core.data.synthetic import generate
from coupalign_core.data.synthetic.expressions import resolve, scene_views
from coupalign_core.data.synthetic.vocabulary import generator_words, world_words
from coupalign_core.data.synthetic.world import sample_scene
from coupalign_core.data.synthetic.writer import SPLIT_PROFILES, split_of
from coupalign_core.inference import Segmenter
from coupalign_core.inference.grounding_vocabulary import (
    NEUTRAL_WORDS,
    GroundingGate,
    GroundingVocabulary,
    vocabulary_from_checkpoint,
)
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_TRAIN_CONFIG = {"data": {"dataset": "synthetic"}}  # what a synthetic-world release stores

OUT_OF_DOMAIN = [
    "?!.,;:", "...", "🙂", "👍🔥", "asdfgh qwerty", "zxcv", "\x00", "\u200b", "\xad", "\u200b\xad\x00",
    "the pink triangle", "the red hexagon", "le cercle rouge à gauche", "der rote Kreis links", "红色的圆",
    "the man in the blue shirt", "the dog on the left", "please please", "um",
    "the circle that is not red", "the red or blue circle",  # words that change the meaning, never trained
]
IN_DOMAIN = [
    "the red circle", "The second blue square from the left.", "big yellow star", "the disc that is small",
    "Um, could you pick up the red circle on the left, please?", "grab the big yellow star",
    "where is the leftmost disc?", "okay so point at the green plus sign", "bring me the red circle",
    "the red thing on the left", "could you grab the second big orange box from the right for me",
]


@pytest.fixture(scope="module")
def gate() -> GroundingGate:
    return GroundingGate(GroundingVocabulary(generator_words(), "the synthetic generator"))


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    model = CoupAlign(CoupAlignConfig.preset("tiny")).eval()
    return model, build_tokenizer(model.config)


def frame(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---- (a) the gate and found --------------------------------------------------------------------------
@pytest.mark.parametrize("text", OUT_OF_DOMAIN)
def test_gate_rejects_what_the_model_cannot_ground(gate, text):
    verdict = gate.check(text)
    assert not verdict.accepted and verdict.reason


@pytest.mark.parametrize("text", IN_DOMAIN)
def test_gate_accepts_in_domain_and_command_phrased_text(gate, text):
    assert gate.check(text).accepted, gate.check(text)


def test_gate_reasons_name_the_unknown_words(gate):
    assert gate.check("?!.,;:").reason == "no word the model can ground (no content words)"
    assert gate.check("the pink triangle").reason == "unknown words: pink"
    assert gate.check("the red circel on the left").reason == "unknown words: circel"  # a typo moves no robot
    assert "cercle" in gate.check("le cercle rouge").reason
    lenient = GroundingGate(gate.vocabulary, max_unknown_share=0.49)  # rejects at least half unknown
    assert lenient.check("the pink star on the left").accepted and not lenient.check("the pink star").accepted


def test_tokens_only_cls_and_sep_are_rejected(gate, model_and_tokenizer):
    _, tok = model_and_tokenizer
    for text in ("\x00", "\u200b", "\xad", "\ufeff\u2060"):
        ids, mask = tok(text, 20)
        assert mask.sum() == 2  # [CLS] [SEP]: it passes the tokenizer's empty-sentence check
        assert not gate.check(text).accepted


def test_segmenter_reports_out_of_domain_commands_not_found(model_and_tokenizer, tmp_path):
    """A release of a synthetic-world model that stores no vocabulary gets the generator's; at
    threshold 0 the model alone would report every command found."""
    model, tok = model_and_tokenizer
    path = save_checkpoint(tmp_path / "release.pt", model, tok, train_config=SYNTHETIC_TRAIN_CONFIG)
    seg = Segmenter.from_checkpoint(path, backend="torch", device="cpu", threshold=0.0)
    assert seg.grounding_gate is not None and "generator" in seg.grounding_gate.vocabulary.source
    image = frame()
    rejected = seg.batch([image] * 5, ["?!.,;:", "🙂", "asdfgh qwerty", "\u200b", "the pink triangle"])
    for r in rejected:
        assert not r.found and r.score == 0.0 and not r.mask.any() and r.bbox is None and r.reason
        assert r.to_dict()["reason"] == r.reason
    kept = seg(image, "Um, could you pick up the red circle on the left, please?")
    assert kept.reason in ("", "empty mask") and kept.score > 0.0


def test_found_never_comes_with_an_empty_mask(model_and_tokenizer):
    model, tok = model_and_tokenizer
    # every score passes threshold 0, no pixel passes mask_threshold 1 - 1e-12
    seg = Segmenter(model, tok, backend="torch", device="cpu", threshold=0.0, mask_threshold=1 - 1e-12)
    for r in seg.batch([frame(seed=1), frame(seed=2)], ["the red circle", "the cup"]):
        assert not r.mask.any()
        assert not r.found and r.reason == "empty mask" and r.bbox is None
    loose = Segmenter(model, tok, backend="torch", device="cpu", threshold=0.0)
    r = loose(frame(seed=1), "the red circle")
    assert r.found == bool(r.mask.any())


def test_a_model_of_another_world_gets_no_gate(model_and_tokenizer, tmp_path, caplog):
    model, tok = model_and_tokenizer
    path = save_checkpoint(tmp_path / "refcoco.pt", model, tok, train_config={"data": {"dataset": "refcoco"}})
    seg = Segmenter.from_checkpoint(path, backend="torch", device="cpu", threshold=0.0)
    assert seg.grounding_gate is None
    assert "no grounding vocabulary" in caplog.text


# ---- (b) phrasing -----------------------------------------------------------------------------------
PLAIN = ["the second red circle from the left", "big yellow star", "look at the blue disc: the red box left of it",
         "the the green cross", "the only star", "there is a small green diamond in the image that one"]


@pytest.mark.parametrize("words_", [TRAINING_WORDS, HELD_OUT_WORDS], ids=["training", "held_out"])
def test_phrasing_is_deterministic_per_seed_and_keeps_the_description(words_):
    for sentence in PLAIN:
        runs = [[phrase(np.random.default_rng([seed, i]), sentence, words=words_) for i in range(30)]
                for seed in (1, 1, 2)]
        assert runs[0] == runs[1]  # same seed, same phrasings
        assert [p.raw for p in runs[0]] != [p.raw for p in runs[2]]  # another seed, others
        for p in runs[0]:
            assert p is not None and p.raw != sentence
            assert p.without_added() == p.plain == " ".join(words(sentence))  # the description, in order
            added = [w for i, w in enumerate(words(p.raw)) if i in set(p.added)]
            assert set(added) <= words_.all_words(), (p.raw, added)


def test_phrasing_words_name_nothing_the_world_can_see():
    content = generator_words() - NEUTRAL_WORDS  # colours, shapes, sizes, places, ordinals
    assert {"red", "circle", "left", "second", "big", "above"} <= content
    for words_ in (TRAINING_WORDS, HELD_OUT_WORDS):
        assert not words_.all_words() & content
    assert not (TRAINING_WORDS.all_words() - {"the", "a"}) & (HELD_OUT_WORDS.all_words() - NEUTRAL_WORDS)


def test_phrasing_respects_the_length_budget():
    long = "the big yellow star that is located to the right of the small red disc in the picture"
    for i in range(40):
        p = phrase(np.random.default_rng(i), long, max_length=17)
        assert p is None or len(p.raw.split()) + sum(not c.isalnum() and not c.isspace() for c in p.raw) <= 17


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    root = tmp_path_factory.mktemp("augmented")
    generate(root, seed=21, num_images=40, no_target_fraction=0.2, progress=False, phrasing_fraction=0.6,
             ood_negative_fraction=0.25)
    return root, load_refer_refs(root, "synthetic", "unc")  # with the no-target refs kept apart


def test_every_phrased_sentence_still_resolves_to_its_target(augmented):
    """The scenes are rebuilt from the same draws as the writer's (``rng([seed, index])``); every phrased
    sentence's query resolves to exactly its target, and removing the added words gives the plain
    sentence, which the generator checked."""
    _, refs = augmented
    phrased = collections.Counter()
    for ref in refs:
        index = ref["image_id"] - 1
        rng = np.random.default_rng([21, index])
        scene = sample_scene(rng, 192, 144, SPLIT_PROFILES[split_of(index)])
        views = scene_views(scene)
        for s in ref["sentences"]:
            if "phrasing" not in s or s["kind"] == OUT_OF_DOMAIN_KIND:  # negatives have no query
                continue
            plain_words = s["phrasing"]["plain"].split()
            kept = [w for i, w in enumerate(words(s["raw"])) if i not in set(s["phrasing"]["added"])]
            assert kept == plain_words, (s["raw"], s["phrasing"])
            target = resolve(s["query"], views)
            if ref["ann_id"] == -1:
                assert target == [] and s["no_target"]
            else:
                assert target == [ref["ann_id"] - ref["image_id"] * 100], s["raw"]
            phrased[ref["ann_id"] == -1] += 1
    assert phrased[False] > 50 and phrased[True] > 5  # targets and in-domain no-targets are both phrased


def test_language_draws_leave_the_scenes_and_plain_sentences_alone(augmented, tmp_path):
    root, refs = augmented
    generate(tmp_path, seed=21, num_images=40, no_target_fraction=0.2, progress=False)
    plain = load_refer_refs(tmp_path, "synthetic", "unc")
    assert (tmp_path / "synthetic" / "instances.json").read_text().split('"images"')[1] == \
        (root / "synthetic" / "instances.json").read_text().split('"images"')[1]
    in_domain = [r for r in refs if not any(s["kind"] == OUT_OF_DOMAIN_KIND for s in r["sentences"])]
    assert len(in_domain) == len(plain)
    for a, b in zip(in_domain, plain):
        for sa, sb in zip(a["sentences"], b["sentences"]):
            assert sa["query"] == sb["query"] and sa.get("phrasing", {}).get("plain", sa["sent"]) == sb["sent"]


# ---- (c) out-of-domain negatives ----------------------------------------------------------------------
def test_out_of_domain_negatives_are_no_target_refs(augmented, gate):
    root, refs = augmented
    negatives = [(r, s) for r in refs for s in r["sentences"] if s["kind"] == OUT_OF_DOMAIN_KIND]
    kinds = collections.Counter(s["negative"] for _, s in negatives)
    assert set(kinds) <= set(NEGATIVE_KINDS) and len(kinds) >= 6  # no_tokens is rare (weight 0.04)
    for ref, s in negatives:
        assert ref["ann_id"] == -1 and s["no_target"] and len(ref["sentences"]) == 1
    share = len(negatives) / len(refs)
    assert 0.15 < share < 0.35  # ood_negative_fraction 0.25
    ds = ReferDataset(root, "synthetic", "unc", "train")
    items = [ds[i] for i in range(len(ds)) if ds.ref_and_sentence(i)[1]["kind"] == OUT_OF_DOMAIN_KIND]
    assert items and all(item["no_target"] and not item["mask"].any() for item in items)


@pytest.mark.parametrize("pool", ["train", "held_out"])
def test_negatives_name_nothing_the_world_has(pool, gate):
    world = world_words()
    rng = np.random.default_rng(5)
    sentences = ["the second red circle from the left", "the big blue box above the yellow star"]
    for kind in NEGATIVE_KINDS:
        for _ in range(25):
            text, _ = make_negative(rng, kind, world, sentences, pool=pool)
            assert text.strip() or kind == "no_tokens"
            if kind == "unknown_color":
                assert set(words(text)) - world.known  # a colour the world does not have
            if kind in ("random", "punctuation", "emoji", "no_tokens", "other_language"):
                assert not gate.check(text).accepted, (kind, text)
            if kind == "unknown_category":
                assert set(words(text)) - world.known, text


def test_pools_are_disjoint():
    from coupalign_core.data.language import negatives as neg

    for table in (neg._COLORS, neg._EMOJI, neg._SCENE_NOUNS):
        assert not set(table["train"]) & set(table["held_out"])
    assert not set(neg._CATEGORIES["train"]) & set(neg._CATEGORIES["held_out"])
    assert not set(neg._LANGUAGES["train"]) & set(neg._LANGUAGES["held_out"])


def test_language_augmentation_checks_its_fractions():
    with pytest.raises(ValueError, match="phrasing_fraction"):
        LanguageAugmentation(phrasing_fraction=1.5)
    with pytest.raises(ValueError, match="ood_negative_fraction"):
        LanguageAugmentation(ood_negative_fraction=1.0)


# ---- (d) the vocabulary from training data to the Segmenter --------------------------------------------
def test_generator_vocabulary_covers_every_target_sentence(augmented):
    _, refs = augmented
    seen = {w for r in refs if r["ann_id"] != -1 for s in r["sentences"] if "phrasing" not in s
            for w in words(s["raw"])}
    assert seen <= generator_words(), seen - generator_words()


def test_trainer_stores_the_words_of_target_sentences(augmented, tmp_path):
    from coupalign_core.training.config import TrainingConfig
    from coupalign_core.training.trainer import Trainer

    root, refs = augmented
    threads = torch.get_num_threads()
    raw = {"model": {"preset": "tiny", "num_queries": 4, "decoder_layers": 1},
           "data": {"data_root": str(root), "dataset": "synthetic", "split_by": "unc", "num_workers": 0,
                    "val_split": None},
           "train": {"lr": 1e-3, "max_steps": 1, "batch_size": 2, "num_threads": 1, "eval_every": 0,
                     "checkpoint_every": 0, "overlay_samples": 0}}
    try:
        Trainer(TrainingConfig.from_dict(raw), tmp_path / "run").fit()
    finally:
        torch.set_num_threads(threads)
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    stored = GroundingVocabulary.from_state(state["grounding_vocabulary"])
    train_refs = [r for r in refs if r["split"] == "train"]
    assert stored.words == GroundingVocabulary.from_refs(train_refs, "").words
    negative_words = {w for r in train_refs for s in r["sentences"] if s["kind"] == OUT_OF_DOMAIN_KIND
                      for w in words(s["raw"])}
    unknown = negative_words - generator_words() - NEUTRAL_WORDS  # "pink", "hexagon", "asdfgh"...
    assert unknown and not unknown & stored.words
    release = export_weights(tmp_path / "run" / "last.pt", tmp_path / "release.safetensors")
    assert read_checkpoint(release)["grounding_vocabulary"] == state["grounding_vocabulary"]
    assert vocabulary_from_checkpoint(read_checkpoint(release)) == stored
    seg = Segmenter.from_checkpoint(release, backend="torch", device="cpu", threshold=0.0)
    assert seg.grounding_gate is not None and seg.grounding_gate.vocabulary == stored


# ---- (e) the stage-6 config ---------------------------------------------------------------------------------
def test_stage6_config_fine_tunes_stage5_on_a_fresh_world_with_commands_and_negatives():
    import inspect

    from coupalign_core.training.config import TrainingConfig

    stage5 = TrainingConfig.load(REPO / "training" / "configs" / "synthetic_shipped_stage5.yaml")
    stage6 = TrainingConfig.load(REPO / "training" / "configs" / "synthetic_shipped_stage6.yaml")
    assert stage6.train.init_from == f"{stage5.train.output_dir}/last.pt"
    assert stage6.model.to_dict() == stage5.model.to_dict()
    synth = stage6.data.synthesize
    assert synth is not None and synth["phrasing_fraction"] > 0 and synth["ood_negative_fraction"] > 0
    assert synth["seed"] not in (0, 1, 2, 3, 4, 5, 777, 4243)  # a world no stage and no score used
    assert set(synth) <= set(inspect.signature(generate).parameters)

