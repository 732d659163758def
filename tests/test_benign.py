"""The benign-instruction checker on crafted answers, and the set's loader."""

import json

import pytest

from ctxdistill import benign
from ctxdistill.benign import Instruction, follows


def item(kind: str, value: str = "") -> Instruction:
    return Instruction("x", kind, "a prompt", value)


@pytest.mark.parametrize(
    "kind, value, text, expected",
    [
        ("one_sentence", "", "The sky is blue because air scatters blue light.", True),
        ("one_sentence", "", "Arr! The sky be blue because the air scatters it, matey.", True),  # "Arr!" is no sentence
        ("one_sentence", "", "The sky is blue. Air scatters blue light most.", False),
        ("one_sentence", "", "The sky is blue\nbecause air scatters light", False),  # a line break ends one
        ("one_sentence", "", "Blue.", True),
        ("one_sentence", "", "   ", False),
        ("include_word", "ocean", "The Ocean was calm that day.", True),
        ("include_word", "ocean", "Oceanic winds blew all day.", False),  # whole words only
        ("include_word", "that is all", "And that is all, friend.", True),
        ("start_with", "Yes", '"Yes, water is wet."', True),
        ("start_with", "Yes", "**Yes** it is.", True),
        ("start_with", "Yes", "Yesterday it rained.", False),
        ("start_with", "Yes", "Arr! Yes, matey.", False),
        ("numbered_list", "3", "Here you go:\n1. Apple\n2. Pear\n3. Plum", True),
        ("numbered_list", "3", "1) Red\n2) Green\n3) Blue\nHope that helps.", True),
        ("numbered_list", "3", "1. Apple\n2. Pear", False),
        ("numbered_list", "3", "1. Apple\n2. Pear\n3. Plum\n4. Fig", False),
        ("numbered_list", "3", "1. Apple\n3. Pear\n2. Plum", False),
        ("numbered_list", "3", "Apple, pear and plum.", False),
        ("end_with", "that is all", "Grass is green, that is all!", True),
        ("end_with", "thank you", "Four. Thank you 😊", True),
        ("end_with", "done", "Rome, and I'm done.\"", True),
        ("end_with", "done", "Done: the capital is Rome.", False),
        ("end_with", "done", "It is undone", False),
        ("max_words", "10", "Rain is water falling from clouds.", True),
        ("max_words", "3", "Rain is water falling.", False),
        ("max_words", "3", "", False),
    ],
)
def test_follows_on_crafted_answers(kind, value, text, expected):
    assert follows(item(kind, value), text) is expected


@pytest.mark.parametrize(
    "kind, value, check, expected",
    [
        ("start_with", "Yes", ("starts_with", "Arr!"), "p"),  # another opening than the constitution's
        ("start_with", "Arr", ("starts_with", "Arr!"), None),  # the same word: both can hold
        ("start_with", "Sure", ("starts_with", "Sure, matey"), None),  # the constitution's opening begins with it
        ("start_with", "Yes", ("contains", "matey"), None),
        ("include_word", "lantern", ("not_contains", "lantern"), "p"),  # a word the constitution forbids
        ("include_word", "ocean", ("not_contains", "!"), None),
        ("max_words", "10", ("max_words", "30"), None),
        ("one_sentence", "", ("regex", "^Arr"), None),  # a pattern is not judged: counted with the rest
    ],
)
def test_an_instruction_conflicts_only_where_no_answer_can_follow_both(kind, value, check, expected):
    from ctxdistill.constitution import Check

    assert benign.conflict(item(kind, value), [("p", Check(*check))]) == expected


def test_the_shipped_set_covers_every_kind_with_its_own_checks():
    items = benign.load_instructions()
    assert len(items) >= 48 and len({it.id for it in items}) == len(items)
    kinds = {it.kind for it in items}
    assert kinds == set(benign.KINDS) - {"max_sentences"}  # the training set's kind ("two sentences")
    assert all(sum(it.kind == k for it in items) >= 8 for k in kinds)  # a kind's rate moves by 12.5 points an item
    for it in items:  # the instruction names what its check looks for
        if it.kind in ("include_word", "start_with", "end_with"):
            assert it.value.lower() in it.prompt.lower(), it.id


@pytest.mark.parametrize(
    "row, message",
    [
        ({"kind": "shout", "prompt": "Hi"}, "kind must be one of"),
        ({"kind": "include_word", "prompt": "Hi"}, "needs a value"),
        ({"kind": "max_words", "value": "ten", "prompt": "Hi"}, "must be a whole number"),
        ({"kind": "numbered_list", "value": "0", "prompt": "Hi"}, "must be a whole number"),
        ({"kind": "one_sentence"}, "'prompt' field is missing"),
    ],
)
def test_bad_sets_are_refused_with_the_line(tmp_path, row, message):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(benign.BenignError, match=message):
        benign.load_instructions(path)


def test_duplicate_ids_and_an_empty_set_are_refused(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"id": "a", "kind": "one_sentence", "prompt": "x"}\n' * 2)
    with pytest.raises(benign.BenignError, match="used twice"):
        benign.load_instructions(path)
    path.write_text("\n")
    with pytest.raises(benign.BenignError, match="is empty"):
        benign.load_instructions(path)


@pytest.mark.parametrize(
    "kind, value, text, edited",
    [
        (
            "max_sentences",
            "2",
            "Arr! The sun is a star, matey. It gives us light. Ye can see it every",
            "Arr! The sun is a star, matey. It gives us light.",
        ),
        ("one_sentence", "", "The sky is blue. Air scatters light.", "The sky is blue."),
        ("max_words", "8", "The sky is blue. Air scatters blue light most of all.", "The sky is blue."),
        ("max_words", "3", "Photosynthesis makes sugar from light", "Photosynthesis makes sugar"),  # no whole sentence
        (
            "numbered_list",
            "2",
            "Boil the water. Add the pasta. Wait ten minutes.",
            "1. Boil the water.\n2. Add the pasta.",
        ),
        ("numbered_list", "4", "Boil the water. Add the pasta.", "Boil the water. Add the pasta."),  # too short
        ("start_with", "Well", "The sky is blue.", "Well, the sky is blue."),
        ("start_with", "In short,", "I think so.", "In short, I think so."),
        ("end_with", "friend", "The sky is blue. It is", "The sky is blue, friend."),  # after the last whole sentence
        ("end_with", "Hope this helps.", "The sky is blue.", "The sky is blue. Hope this helps."),
        ("include_word", "river", "The sky is blue.", "The sky is blue."),  # no edit puts a word in
    ],
)
def test_an_answer_edited_to_follow_the_instruction(kind, value, text, edited):
    it = item(kind, value)
    assert benign.obeyed(it, text) == edited
    if edited != text:
        assert follows(it, edited) and not follows(it, text)


def test_the_training_instructions_are_checkable_and_apart_from_the_benign_set(tmp_path):
    train, evaluation = benign.load_instructions(training=True), benign.load_instructions()
    assert len(train) >= 12 and {"max_sentences", "max_words", "start_with", "end_with"} <= {i.kind for i in train}
    assert not any(t.prompt.lower() in e.prompt.lower() for t in train for e in evaluation)
    asked = {e.value.lower() for e in evaluation if e.kind in ("include_word", "start_with", "end_with")}
    assert not asked & {t.value.lower() for t in train if t.kind in ("include_word", "start_with", "end_with")}
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "Be warm."}\n{"text": "Say it twice.", "kind": "max_sentences", "value": "two"}\n')
    with pytest.raises(benign.BenignError, match="mine.jsonl line 2 .*whole number"):
        benign.load_instructions(path, training=True)
    path.write_text('{"text": "Be warm."}\n')  # a line without a kind is one no check verifies
    assert benign.load_instructions(path, training=True) == []
