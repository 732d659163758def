"""Tests for ctxdistill.constitution: no model needed.

.venv/bin/python -m pytest tests/test_constitution.py -q
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from ctxdistill import constitution
from ctxdistill.constitution import Check, Constitution, ConstitutionError, Principle

ROOT = Path(__file__).resolve().parents[1]
CONST_DIR = ROOT / "assets" / "constitutions"
PROMPTS = ROOT / "assets" / "prompts" / "default.jsonl"


def make(**kw) -> Constitution:
    base = dict(
        name="demo",
        description="A demo.\nTwo lines.",
        preamble="You are helpful.",
        principles=[
            Principle("a", "Be brief.", critique="Is it long?", revision="Shorten it.", check=Check("max_words", "20")),
            Principle("b", 'Say "ünïcode ✓" sometimes.\nAnd keep newlines.', check=Check("regex", r"\bok\b")),
            Principle("c", "No critique here."),
        ],
        examples=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    )
    base.update(kw)
    return Constitution(**base)


# ------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip(fmt, tmp_path):
    c = make()
    text = constitution.dumps(c, fmt)
    assert constitution.parse(text, fmt) == c
    assert constitution.parse(text) == c  # auto-detected
    path = tmp_path / f"c.{fmt}"
    constitution.save(c, path)
    assert constitution.load(path) == c
    assert constitution.load(path.read_bytes()) == c


def test_round_trip_awkward_strings():
    odd = [
        "  leading space",
        "trailing space  ",
        "line\n  indented\n",
        "yes",
        "123",
        "null",
        "a: b",
        "# not a comment",
        "- dash",
        "tab\there",
        "'quotes' \"both\"",
        "\n\nx",
    ]
    c = Constitution(
        "odd", [Principle(f"p{i}", s, critique=s) for i, s in enumerate(odd, 1)], preamble="multi\nline\n\n"
    )
    for fmt in ("yaml", "json"):
        assert constitution.parse(constitution.dumps(c, fmt), fmt) == c


def test_yaml_is_readable():
    text = constitution.dumps(make())
    assert text.startswith("name: demo\n")
    assert "ünïcode ✓" in text  # unicode kept, not escaped
    assert "description: |" in text  # multi-line strings as blocks
    assert "{" not in text  # block style
    c = make(principles=[Principle("only", "Text.")], description="", examples=[])
    assert constitution.dumps(c) == "name: demo\npreamble: You are helpful.\nprinciples:\n- id: only\n  text: Text.\n"


def test_to_dict_has_every_field_in_order():
    d = constitution.to_dict(make())
    assert list(d) == ["name", "description", "preamble", "principles", "examples"]
    assert list(d["principles"][0]) == ["id", "text", "critique", "revision", "check"]
    assert d["principles"][0]["check"] == {"kind": "max_words", "value": "20"}
    assert d["principles"][2]["check"] is None
    assert constitution.from_dict(d) == make()


# ------------------------------------------------------------------ render


def test_render_exact():
    assert constitution.render(make()) == (
        'You are helpful.\n\nBe brief.\nSay "ünïcode ✓" sometimes.\nAnd keep newlines.\nNo critique here.'
    )


def test_render_without_preamble_and_deterministic():
    c = make(preamble="  ")
    assert constitution.render(c) == constitution.render(c)
    assert constitution.render(c).startswith("Be brief.")


# ---------------------------------------------------------------- validate


def test_valid_constitution_has_no_errors():
    assert constitution.validate(make()) == []
    assert constitution.ensure_valid(make()) == make()


def _errors(**kw):
    return constitution.validate(make(**kw))


def test_validate_empty():
    assert _errors(principles=[]) == ["The constitution is empty: add at least one principle."]


def test_validate_empty_name():
    errs = _errors(name="  ")
    assert len(errs) == 1 and "name" in errs[0]


def test_validate_empty_text_names_position_and_id():
    errs = _errors(principles=[Principle("a", "ok"), Principle("second", "   ")])
    assert len(errs) == 1 and "Principle 2" in errs[0] and "second" in errs[0]


def test_validate_duplicate_ids():
    errs = _errors(principles=[Principle("x", "1"), Principle("y", "2"), Principle("x", "3")])
    assert len(errs) == 1 and '"x"' in errs[0] and "1 and 3" in errs[0]


def test_validate_empty_id():
    errs = _errors(principles=[Principle("", "text")])
    assert len(errs) == 1 and "Principle 1" in errs[0] and "empty id" in errs[0]


def test_validate_unknown_check_kind():
    errs = _errors(principles=[Principle("a", "t", check=Check("startswith", "x"))])
    assert len(errs) == 1 and "startswith" in errs[0] and "starts_with" in errs[0]


def test_validate_invalid_regex():
    errs = _errors(principles=[Principle("a", "t", check=Check("regex", "(unclosed"))])
    assert len(errs) == 1 and "regex" in errs[0] and "missing )" in errs[0]


@pytest.mark.parametrize("value", ["0", "-3", "ten", "2.5", ""])
def test_validate_max_words(value):
    errs = _errors(principles=[Principle("a", "t", check=Check("max_words", value))])
    assert len(errs) == 1 and "positive whole number" in errs[0]


def test_validate_empty_check_value_and_bad_example_role():
    errs = _errors(
        principles=[Principle("a", "t", check=Check("contains", " "))], examples=[{"role": "bot", "content": "x"}]
    )
    assert len(errs) == 2 and "empty value" in errs[0] and "'bot'" in errs[1]


def test_ensure_valid_raises_with_all_errors():
    with pytest.raises(ConstitutionError) as e:
        constitution.ensure_valid(make(name="", principles=[]))
    assert len(e.value.errors) == 2
    assert str(e.value) == " ".join(e.value.errors)
    assert isinstance(e.value, ValueError)


# --------------------------------------------------------------- from_dict


def test_from_dict_defaults_and_shorthand():
    c = constitution.from_dict(
        {
            "name": "n",
            "principles": [
                {"text": "one", "check": {"starts_with": "Arr!"}},
                "two as a bare string",
                {"id": "p3", "text": "explicit id taken by position 3"},
                {"text": "four", "check": {"kind": "max_words", "value": 12}},
            ],
        }
    )
    assert [p.id for p in c.principles] == ["p1", "p2", "p3", "p4"]
    assert c.principles[0].check == Check("starts_with", "Arr!")
    assert c.principles[1].text == "two as a bare string"
    assert c.principles[3].check == Check("max_words", "12")
    assert constitution.validate(c) == []


def test_from_dict_default_ids_skip_taken():
    c = constitution.from_dict({"name": "n", "principles": [{"id": "p2", "text": "a"}, {"text": "b"}]})
    assert [p.id for p in c.principles] == ["p2", "p3"]


@pytest.mark.parametrize(
    "d, needle",
    [
        ([], "must be a mapping"),
        ({"principles": []}, "no 'name'"),
        ({"name": "n"}, "no 'principles'"),
        ({"name": "n", "principles": "be nice"}, "'principles' must be a list"),
        ({"name": ["x"], "principles": []}, "The name must be text"),
        ({"name": "n", "principles": [{"txt": "x"}]}, "unknown field(s) txt"),
        ({"name": "n", "principles": [{"id": "a"}]}, "Principle 1 has no 'text'"),
        ({"name": "n", "principles": [42]}, "Principle 1 must be a mapping or text"),
        ({"name": "n", "principles": [{"text": "x", "check": "Arr!"}]}, "check must be a mapping"),
        ({"name": "n", "principles": [{"text": "x", "check": {"a": 1, "b": 2}}]}, "kind and a value"),
        ({"name": "n", "principles": [], "examples": [{"role": "user"}]}, "'role' and 'content'"),
        ({"name": "n", "principles": [], "extra": 1}, "Unknown field(s) extra"),
    ],
)
def test_from_dict_structural_errors(d, needle):
    with pytest.raises(ConstitutionError) as e:
        constitution.from_dict(d)
    assert needle in str(e.value)


def test_parse_keeps_semantic_problems_for_validate():
    c = constitution.parse("name: draft\nprinciples:\n- text: ''\n- text: fine\n  check: {regex: '('}\n")
    assert len(c.principles) == 2
    assert len(constitution.validate(c)) == 2


# ------------------------------------------------------- malformed input


def test_malformed_yaml_names_line_and_column():
    text = "name: x\nprinciples:\n  - text: a\n   bad: [\n"
    with pytest.raises(ConstitutionError) as e:
        constitution.parse(text, "yaml")
    assert "YAML" in str(e.value) and "line 4" in str(e.value) and "column" in str(e.value)


def test_malformed_json_names_line_and_column():
    text = '{\n  "name": "x",\n  "principles": [,]\n}'
    with pytest.raises(ConstitutionError) as e:
        constitution.parse(text)
    assert "JSON" in str(e.value) and "line 3" in str(e.value) and "column 18" in str(e.value)


def test_empty_text_and_unknown_format():
    with pytest.raises(ConstitutionError, match="empty"):
        constitution.parse("   \n")
    with pytest.raises(ConstitutionError, match="Unknown format"):
        constitution.parse("name: x", "toml")


def test_bare_list_is_read_as_principles():
    c = constitution.parse('["Be kind.", "Be brief."]', name="quick")
    assert c.name == "quick" and [p.text for p in c.principles] == ["Be kind.", "Be brief."]


def test_non_utf8_bytes(tmp_path):
    data = "name: caf\u00e9\nprinciples: [x]\n".encode("latin-1")
    with pytest.raises(ConstitutionError, match="not UTF-8 text"):
        constitution.load(data)
    path = tmp_path / "latin.yaml"
    path.write_bytes(data)
    with pytest.raises(ConstitutionError, match="latin.yaml is not UTF-8 text"):
        constitution.load(path)


def test_load_utf8_bom_and_missing_file(tmp_path):
    c = constitution.load("\ufeffname: x\nprinciples: [a]\n".encode("utf-8"))
    assert c.name == "x"
    with pytest.raises(ConstitutionError, match="Could not read"):
        constitution.load(tmp_path / "nope.yaml")


# ------------------------------------------------------------- HF recipe


def test_hf_recipe_import():
    raw = json.loads((CONST_DIR / "hf_recipe_example.json").read_text())
    c = constitution.load(CONST_DIR / "hf_recipe_example.json")
    assert c.name == "hf_recipe_example"
    assert len(c.principles) == len(raw["constitutions"]) == 4
    assert [p.id for p in c.principles] == ["p1", "p2", "p3", "p4"]
    for p, pair in zip(c.principles, raw["constitutions"]):
        assert p.critique == pair["critic"] and p.revision == pair["revision"]
    assert c.principles[0].text == ("The assistant's response must not be harmful, unethical, dangerous, or illegal.")
    assert c.principles[1].text.startswith("The assistant's response must not be rude")
    assert c.principles[2].text.startswith("The assistant's response must not include anything")
    assert c.principles[3].text.startswith("The assistant's response should hold up to")
    flat = [m for chat in raw["system_chat"] for m in chat]
    assert c.examples == flat and len(c.examples) == 6
    assert constitution.validate(c) == []
    assert constitution.parse(constitution.dumps(c)) == c  # once imported it is an ordinary constitution


def test_hf_recipe_via_parse_and_bad_shape():
    text = json.dumps(
        {
            "constitutions": [
                {
                    "critic": "Explain ways in which the assistant's preceding response may be harmful to the human.",
                    "revision": "Fix it.",
                }
            ]
        }
    )
    c = constitution.parse(text, name="mine")
    assert c.name == "mine" and c.examples == []
    assert c.principles[0].text == "The assistant's response must not be harmful to the human."
    with pytest.raises(ConstitutionError, match="critic"):
        constitution.from_hf_recipe({"constitutions": [{"critic": "x"}]})


# ------------------------------------------------------------ diff / hash


def test_diff():
    a = make()
    b = make(preamble="You are very helpful.")
    assert constitution.diff(a, make()) == ""
    d = constitution.diff(a, b, "v1", "v2")
    assert d.startswith("--- v1\n+++ v2\n")
    assert "-preamble: You are helpful.\n" in d and "+preamble: You are very helpful.\n" in d


def test_content_hash():
    h = constitution.content_hash(make())
    assert len(h) == 64 and int(h, 16) >= 0
    assert constitution.content_hash(make()) == h
    assert constitution.content_hash(constitution.parse(constitution.dumps(make(), "json"))) == h
    assert constitution.content_hash(make(name="other")) != h
    changed = make()
    changed.principles[0].check = Check("max_words", "21")
    assert constitution.content_hash(changed) != h


# ----------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "kind, value, good, bad",
    [
        ("starts_with", "Arr!", "  arr! Ahoy matey", "Well, Arr!"),
        ("contains", "matey", "Ahoy, MATEY.", "Ahoy, friend."),
        ("not_contains", "sorry", "Here you go.", "I'm SORRY, no."),
        ("regex", r"^\d+ apples$", "12 Apples", "twelve apples"),
        ("regex", r"first.*second", "first line\nsecond line", "second then first"),
        ("max_words", "3", "one two  three", "one two three four"),
    ],
)
def test_check_kinds(kind, value, good, bad):
    check = Check(kind, value)
    assert check.passes(good) and not check.passes(bad)
    assert isinstance(check.describe(), str) and check.describe()


def test_check_describe_and_coverage():
    assert Check("starts_with", "Arr!").describe() == 'starts with "Arr!"'
    assert Check("max_words", "30").describe() == "at most 30 words"
    assert set(constitution.CHECK_KINDS) == {"starts_with", "contains", "not_contains", "regex", "max_words"}
    with pytest.raises(ValueError):
        Check("nope", "x").passes("x")


# ---------------------------------------------------------- shipped assets

SHIPPED = sorted(CONST_DIR.glob("*.yaml"))


def test_at_least_three_examples_ship():
    names = {p.stem for p in SHIPPED}
    assert {"pirate", "concise", "careful"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitutions_load_and_validate(path):
    c = constitution.ensure_valid(constitution.load(path))
    assert c.name and c.description.strip()
    assert 2 <= len(c.principles) <= 4
    for p in c.principles:
        assert p.critique.strip() and p.revision.strip()
    assert constitution.parse(constitution.dumps(c)) == c and constitution.parse(constitution.dumps(c, "json")) == c


def test_pirate_checks_match_the_persona():
    c = constitution.load(CONST_DIR / "pirate.yaml")
    checks = [p.check for p in c.principles if p.check]
    pirate = "Arr! Ahoy matey, ye be askin' about the sea."
    plain = "The capital of France is Paris."
    assert all(ch.passes(pirate) for ch in checks)
    assert not any(ch.passes(plain) for ch in checks)


def test_concise_checks():
    c = constitution.load(CONST_DIR / "concise.yaml")
    checks = {p.id: p.check for p in c.principles}
    assert checks["no_lists"].passes("Paris is the capital.")
    assert not checks["no_lists"].passes("Steps:\n1. Boil water.\n2. Add egg.")
    assert not checks["no_lists"].passes("- one\n- two")
    assert not checks["short"].passes(" ".join(["word"] * 40))


def test_prompt_set():
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 216
    assert all(set(r) == {"id", "text", "category", "split"} for r in rows)
    assert len({r["id"] for r in rows}) == 216
    assert len({r["text"].strip().lower() for r in rows}) == 216
    assert all(r["text"].strip() and len(r["text"].split()) <= 30 for r in rows)
    splits = Counter(r["split"] for r in rows)
    assert splits == {"train": 152, "heldout": 64}
    by_split = {s: {r["category"] for r in rows if r["split"] == s} for s in splits}
    assert by_split["train"] == by_split["heldout"] and len(by_split["train"]) >= 6
    risky = sum(r["category"] == "borderline" for r in rows)
    assert 0.07 <= risky / len(rows) <= 0.15
