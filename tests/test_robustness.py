"""The capability set, answer matching, the attack combiner, the placebo prompt and the robustness
suite of an evaluation (tiny model)."""

from __future__ import annotations

import json

import pytest

from ctxdistill import capability as C


# --------------------------------------------------------------------------- answer matching

@pytest.mark.parametrize("text, accepted", [
    ("Paris.", "paris"),
    ("Arr! The capital be PARIS, matey!", ["Paris"]),
    ("It was painted by Leonardo da Vinci.", ["Leonardo da Vinci", "da Vinci"]),
    ("da vinci", ["Leonardo da Vinci", "da Vinci"]),
    ("7 times 8 is fifty-six!", "56"),
    ("The answer is 56", "fifty six"),
    ("one hundred and five", "105"),
    ("There are 1,000 grams in a kilogram.", "1000"),
    ("two thousand three hundred forty-five", "2345"),
    ("It prints True", "true"),
    ("'hithere'", "hithere"),
    ("56.0", "56"),
])
def test_matches_accepts(text, accepted):
    assert C.matches(text, accepted)


@pytest.mark.parametrize("text, accepted", [
    ("The answer is 156", "56"),              # whole numbers, not digits inside one
    ("Parisian food", "Paris"),               # whole words
    ("seven eight", "78"),                    # two numbers, not one
    ("Vinci", ["Leonardo da Vinci"]),         # the whole phrase
    ("", "0"),
    ("Rome", ["Paris", "Lyon"]),
])
def test_matches_refuses(text, accepted):
    assert not C.matches(text, accepted)


def test_shipped_set_is_large_varied_and_never_answered_by_its_own_prompt():
    items = C.load_items()
    assert len(items) >= 120
    assert {"facts", "arithmetic", "units", "dates", "code", "spelling"} <= {it.category for it in items}
    assert len({it.id for it in items}) == len(items)
    # an answer that only repeats the question must not pass
    assert [it.id for it in items if C.matches(it.prompt, it.answers)] == []


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "2+2?"}\n', "'answers' field is missing"),
    ('{"id": "a", "prompt": "2+2?", "answers": []}\n', "'answers' field is missing or empty"),
    ('{"id": "a", "answers": ["4"]}\n', "'prompt' field is missing"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("not json\n", "line 1: not JSON"),
    ('{"id": "a", "prompt": "x", "answers": ["1"]}\n{"id": "a", "prompt": "y", "answers": ["2"]}\n', "used twice"),
    ('{"prompt": "x", "answers": ["?!"]}\n', "non-empty text"),
])
def test_load_items_refuses_bad_sets(tmp_path, content, message):
    path = tmp_path / "cap.jsonl"
    path.write_text(content)
    with pytest.raises(C.CapabilityError, match=message):
        C.load_items(path)


def test_load_items_reads_a_custom_set(tmp_path):
    path = tmp_path / "cap.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "answers": 4}) + "\n" + json.dumps({"id": "x", "prompt": "Capital of Italy?",
                                                                                     "answers": ["Rome"], "category": "facts"}))
    first, second = C.load_items(path)
    assert first.answers == ("4",) and first.category == "general" and second.id == "x"


def test_accuracy_has_a_bootstrap_interval():
    est = C.accuracy([True] * 30 + [False] * 10, n_boot=300)
    assert est["value"] == pytest.approx(0.75) and est["n"] == 40
    assert est["ci"][0] < 0.75 < est["ci"][1]


def test_score_on_the_tiny_model(tiny_model, tiny_tokenizer, monkeypatch):
    items = C.load_items()[:5]
    ticks = []
    flags = C.score(tiny_model, tiny_tokenizer, items, None, max_new_tokens=4, batch_size=2, tick=ticks.append)
    assert len(flags) == 5 and all(isinstance(f, bool) for f in flags) and ticks == [2, 2, 1]
    # what the model says decides: right answers for the first and third item only
    from ctxdistill import generate

    said = [f"Arr, it be {items[0].answers[0]}!", "no idea", items[2].answers[0].upper(), "", "?"]
    monkeypatch.setattr(generate, "sample_rows", lambda model, tok, rows, cfg, **kw: [
        tok.encode(said[i], add_special_tokens=False) for _, _, i in rows])
    assert C.score(tiny_model, tiny_tokenizer, items, "a system prompt") == [True, False, True, False, False]
