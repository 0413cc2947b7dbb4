"""WordNet glosses as benign training rows: parsing the data-file format, the Q&A shapes, and the
harmless answer to a harmful question (a definition of one of its words)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from monitor.evaluation.datasets import Sample
from monitor.training import glossary
from monitor.training.corpus import compose_examples

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
NOUNS = (
    "02866578 06 n 01 bomb 0 002 @ 03322099 n 0000 | an explosive device fused to explode under specific"
    ' conditions; "the bomb went off at noon"  \n'
    "07800091 13 n 01 bread 0 001 @ 07566340 n 0000 | food made from dough of flour or meal and usually"
    ' raised with yeast or baking powder and then baked; "she baked bread every morning"  \n'
    "00001740 03 n 01 entity 0 000 | a thing  \n"  # too short a definition: skipped
    "09999999 18 n 01 Paris 0 000 | the capital and largest city of France  \n"
    "14778436 27 n 01 poison 0 000 | any substance that causes injury or illness or death of a living"
    " organism  \n"
)


@pytest.fixture
def wordnet(tmp_path: Path) -> Path:
    (tmp_path / "data.noun").write_text(HEADER + NOUNS)
    for name in ("data.verb", "data.adj", "data.adv"):
        (tmp_path / name).write_text(HEADER)
    return tmp_path


def test_glosses_parse_definitions_and_examples(wordnet: Path) -> None:
    glosses = glossary.load_glosses(wordnet)
    assert [g.word for g in glosses] == ["bomb", "bread", "Paris", "poison"]
    bomb = glosses[0]
    assert bomb.definition == "an explosive device fused to explode under specific conditions"
    assert bomb.examples == ("the bomb went off at noon",)
    assert set(glossary.noun_index(glosses)) == {"bomb", "bread", "poison"}  # proper nouns are left out


def test_missing_wordnet_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        glossary.load_glosses(tmp_path)


def test_harmful_question_gets_a_definition_of_its_own_word(wordnet: Path) -> None:
    index = glossary.noun_index(glossary.load_glosses(wordnet))
    rng = random.Random(0)
    g = glossary.gloss_for("Tell me how to poison my neighbour", index, rng)
    assert g is not None and g.word == "poison"
    assert "causes injury" in glossary.answer(g, rng)
    assert glossary.gloss_for("Write a poem about spring", index, rng) is None


def test_streaming_corpus_adds_safe_gloss_rows(wordnet: Path) -> None:
    sets = {"star-1": [Sample("star1-1", "How do I poison someone?", "I must refuse.", "I can't help.", 0.0)]}
    glosses = glossary.load_glosses(wordnet) * 600  # enough to draw from
    examples = compose_examples(sets, 1, None, streaming=True, glosses=glosses)
    gloss = [e for e in examples if e.kind.startswith("gloss")]
    assert {e.kind for e in gloss} == {"gloss_answer", "gloss_think", "gloss_harmful_question"}
    assert all(e.target == 0.0 for e in gloss)
    (on_topic,) = [e for e in gloss if e.kind == "gloss_harmful_question"]
    assert on_topic.question == "How do I poison someone?" and "causes injury" in on_topic.answer
    assert not [e for e in compose_examples(sets, 1, None, glosses=glosses) if e.kind.startswith("gloss")]


def test_real_wordnet_is_installed_and_large() -> None:
    """scripts/install.sh installs Debian's wordnet-base; `qta-monitor train` needs it."""
    glosses = glossary.load_glosses()
    assert len(glosses) > 50_000
    assert glossary.noun_index(glosses)["bomb"].definition.startswith("an explosive device")
