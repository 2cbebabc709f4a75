"""The command grammar: it covers every sentence the generators write, and what it vetoes is gone."""

import numpy as np
import pytest

from coupalign_core.data.language import LanguageAugmentation, augment_image_refs
from coupalign_core.data.language.phrasing import HELD_OUT_WORDS, TRAINING_WORDS
from coupalign_core.data.synthetic import expressions as ex
from coupalign_core.data.synthetic.vocabulary import generator_words, world_words
from coupalign_core.data.synthetic.world import sample_scene
from coupalign_core.speech.grammar import PAUSE, Alt, Grammar, Opt, Ref, Seq, Word, command_grammar, template
from coupalign_core.speech.worlds import WorldGrammar, grammar_for, register_world, world_names

SEEDS = (0, 7, 20261201)
SCENES_PER_SEED = 12


def generator_sentences(seed, phrasing_words=TRAINING_WORDS):
    """(sentence, phrasing style or None) of every target and in-domain no-target sentence of
    SCENES_PER_SEED scenes, each also phrased as a command."""
    out = []
    aug = LanguageAugmentation(phrasing_fraction=1.0, phrasing_words=phrasing_words, max_length=ex.MAX_WORDS)
    for index in range(SCENES_PER_SEED):
        rng = np.random.default_rng([seed, index])
        scene = sample_scene(rng, 192, 144, "mixed" if index % 2 else "crowded")
        refs = ex.make_refs(rng, ex.scene_views(scene), num_refs=4, sentences_per_ref=(2, 3), num_no_target=2)
        specs = [{"ann_id": 1, "category_id": 1, "sentences": spec.sentences} for spec in refs]
        for spec in specs:
            out.extend((s["raw"], None) for s in spec["sentences"])
        phrased = augment_image_refs(np.random.default_rng([seed, index, 1]), specs, world_words(), aug,
                                     no_target_ann_id=-1, category_id=lambda word: 1)
        for spec in phrased:
            out.extend((s["raw"], s["phrasing"]["style"]) for s in spec["sentences"] if "phrasing" in s)
    return out


@pytest.fixture(scope="module")
def grammars():
    return grammar_for(["synthetic"], inner_hesitations=True), grammar_for(["synthetic"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("phrasing", ["training", "held_out"])
def test_the_grammar_covers_every_sentence_the_generator_writes(grammars, seed, phrasing):
    full, default = grammars
    sentences = generator_sentences(seed, TRAINING_WORDS if phrasing == "training" else HELD_OUT_WORDS)
    assert len(sentences) > 100 and sum(style is not None for _, style in sentences) > 50
    missed = [s for s, _ in sentences if not full.matches(s)]
    assert missed == []
    # The default grammar leaves out the hesitations and repeats that only the speech style puts
    # inside a description; everything else it covers.
    missed_default = [s for s, style in sentences if style != "speech" and not default.matches(s)]
    assert missed_default == []


def test_a_drifted_generator_would_be_caught(grammars):
    """The coverage test can fail: words or orders the generator never writes are not in the grammar."""
    full, _ = grammars
    for sentence in ("the red circle on the far up", "circle red the", "the pink star", "the red circle left of",
                     "pick up", ""):
        assert not full.matches(sentence), sentence
    assert full.matches("Could you please pick up the second red circle from the left, thanks!")


def test_every_description_word_is_one_the_model_can_ground(grammars):
    """Its descriptions use only the generator's vocabulary (what a synthetic-world model grounds)."""
    _, default = grammars
    description_words = Grammar(default.rules, "synthetic_description").words()
    assert description_words <= generator_words()
    assert len(description_words) > 0.9 * len(generator_words())


def test_the_jsgf_compiles_in_pocketsphinx(grammars):
    pocketsphinx = pytest.importorskip("pocketsphinx")
    _, default = grammars
    decoder = pocketsphinx.Decoder(pocketsphinx.Config(lm=None, loglevel="FATAL"))
    text = default.to_jsgf()
    assert text.startswith("#JSGF V1.0;") and "public <command> =" in text
    fsg = decoder.parse_jsgf(text)
    assert fsg is not None


def test_a_veto_removes_every_path_through_the_word():
    g = command_grammar({"toy_description": Seq((Word("the"), Alt((Word("red"), Word("pink"))), Word("circle")))})
    assert g.matches("the pink circle") and g.matches("please grab the red circle")
    vetoed = g.veto(lambda w: w != "pink")
    assert vetoed.vetoed == {"pink"}
    assert vetoed.matches("the red circle") and not vetoed.matches("the pink circle")
    assert "pink" not in vetoed.words() and "pink" not in vetoed.to_jsgf()
    with pytest.raises(ValueError, match="every sentence"):
        g.veto(lambda w: w != "circle")


def test_optional_words_go_when_vetoed_and_their_sentence_stays():
    g = Grammar({"top": Seq((Opt(Word("big")), Word("box")))}, "top")
    assert g.veto(lambda w: w != "big").matches("box")


@pytest.mark.parametrize("rules, top, message", [
    ({"top": Ref("missing")}, "top", "undefined"),
    ({"top": Ref("top")}, "top", "refer to themselves"),
    ({"top": Word("x")}, "other", "top rule"),
    ({"bad name": Word("x")}, "bad name", "invalid rule name"),
])
def test_malformed_grammars_are_refused(rules, top, message):
    with pytest.raises(ValueError, match=message):
        Grammar(rules, top)


def test_templates_read_slots_optionals_and_pauses():
    node = template("out of all the {Np}, the one [{adv}]", {"Np": "np_plural", "adv": "adverb"})
    assert Opt(Word(PAUSE)) in node.items and Opt(Ref("adverb")) in node.items
    with pytest.raises(ValueError, match="no rule for slot"):
        template("the {X}", {})


def test_a_registered_world_joins_the_grammar():
    register_world("toyworld", lambda: WorldGrammar("toyworld", {
        "description": Seq((Word("the"), Ref("thing"))), "thing": Alt((Word("mug"), Word("bowl")))}))
    try:
        assert "toyworld" in world_names()
        both = grammar_for(["synthetic", "toyworld"])
        assert both.matches("grab the mug") and both.matches("the red circle")
        assert "toyworld_thing" in both.rules
        assert not grammar_for(["synthetic"]).matches("grab the mug")
    finally:
        from coupalign_core.speech import worlds

        worlds._WORLDS.pop("toyworld", None)
    with pytest.raises(ValueError, match="unknown world"):
        grammar_for(["toyworld"])
