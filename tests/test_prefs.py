"""Preference pairs (prefs.py, pair_store.py): AI-feedback labels from the two choice tokens, pairs
from checks and revisions, the job and its resume, the store's review actions, export and import."""

import json
import re

import pytest
import torch

from ctxdistill import pair_files, prefs
from ctxdistill.benign import Instruction
from ctxdistill.constitution import Check, from_dict
from ctxdistill.sampling import chat_ids
from ctxdistill.store import StoreError

PIRATE = {
    "name": "pirate",
    "preamble": "You are a pirate.",
    "principles": [
        {"id": "arr", "text": "Begin with Arr!", "check": {"kind": "starts_with", "value": "Arr"}},
        {"id": "short", "text": "Be brief.", "check": {"kind": "max_words", "value": "6"}},
    ],
}
CHECKS = [("arr", Check("starts_with", "Arr")), ("short", Check("max_words", "6"))]


def _version(store, content=PIRATE) -> int:
    from ctxdistill.constitution import content_hash

    return store.save_constitution(content["name"], content, content_hash(from_dict(content)))


def test_choice_probability_is_the_two_choice_tokens_normalised(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    a_id, b_id = prefs.choice_ids(tok)
    question = prefs.judge_question("Say hi", "Arr matey", "Hello there")
    ids = chat_ids(tok, question, "Talk like a pirate.") + tok.encode(prefs.ANSWER_PREFIX, add_special_tokens=False)
    with torch.no_grad():
        probs = tiny_model(torch.tensor([ids])).logits[0, -1].double().softmax(-1)
    by_hand = float(probs[a_id] / (probs[a_id] + probs[b_id]))
    got = prefs.choice_probability(tiny_model, tok, [("Talk like a pirate.", question)])[0]
    assert got == pytest.approx(by_hand, abs=1e-5)


def test_feedback_label_averages_both_orders(tiny_model, tiny_tokenizer):
    system, prompt, a, b = "Talk like a pirate.", "Say hi", "Arr matey", "Hello there"
    ab, ba = prefs.choice_probability(
        tiny_model,
        tiny_tokenizer,
        [(system, prefs.judge_question(prompt, a, b)), (system, prefs.judge_question(prompt, b, a))],
    )
    label = prefs.feedback_labels(tiny_model, tiny_tokenizer, [(system, prompt, a, b)])[0]
    assert label == pytest.approx((ab + (1 - ba)) / 2, abs=1e-6)


def test_feedback_pair_orients_and_drops_near_half():
    pair = prefs.feedback_pair("p", "first", "second", 0.3, 0.1, {})
    assert (pair["chosen"], pair["rejected"], pair["label"]) == ("second", "first", 0.7)
    assert pair["source"] == "feedback"
    assert prefs.feedback_pair("p", "first", "second", 0.55, 0.1, {}) is None
    assert prefs.feedback_pair("p", "same", "same", 0.9, 0.1, {}) is None


def test_checks_pairs_prefer_the_passing_answer_and_the_edit_that_passes():
    pairs = prefs.checks_pairs("p", ["Hello there, this is a long plain answer", "Arr, short one"], CHECKS)
    # the best answer passes every check: no edit to make
    assert [(p["chosen"], p["rejected"], p["source"], p["label"]) for p in pairs] == [
        ("Arr, short one", "Hello there, this is a long plain answer", "checks", 1.0)
    ]
    assert pairs[0]["meta"]["principles"] == ["arr", "short"]
    # each passes a check the other fails: no verdict between them; the best one cut to six words passes both
    (pair,) = prefs.checks_pairs("p", ["Arr, but this answer is far too long to pass", "Short plain one"], CHECKS)
    assert (pair["chosen"], pair["rejected"]) == (
        "Arr, but this answer is far",
        "Arr, but this answer is far too long to pass",
    )
    assert pair["meta"] == {"principles": ["short"], "edit": True}
    assert prefs.checks_pairs("p", ["Arr ok", "Arr ok"], CHECKS) == []
    assert prefs.check_verdict("Arr yes", "no", CHECKS)[0] == 1


def test_edits_put_the_opening_first_take_text_out_and_then_count_words():
    checks = [("a", Check("starts_with", "Arr!")), ("b", Check("not_contains", "!!")), ("c", Check("max_words", "4"))]
    assert prefs.edited("  Hello!! there, my friend", checks) == "Arr! Hello there, my"
    assert prefs.edited("Arr! fine", checks) == "Arr! fine"
    # a regex check that is not one literal phrase cannot be met by an edit: no edit pair
    assert prefs.checks_pairs("p", ["plain words"], [("v", Check("regex", r"\b(ye|aye)\b"))]) == []


def test_a_word_limit_edit_ends_on_a_whole_sentence_where_one_fits():
    limit = [("s", Check("max_words", "8"))]
    assert prefs.edited("The sky is blue. Air scatters blue light most of all.", limit) == "The sky is blue."
    no_end = "Air scatters blue light most of all the time"  # no whole sentence within the limit
    assert prefs.edited(no_end, limit) == "Air scatters blue light most of all the"


def test_sides_that_end_where_the_sampling_budget_cut_are_marked_unfinished():
    cut = "Arr, the sea is wide and the waves are tall and the wind blows"
    pair = {"prompt": "p", "chosen": f"Arr! Matey, {cut[5:]}", "rejected": cut, "meta": {"edit": True}}
    assert prefs.marked_unfinished(pair, [cut])["meta"] == {"edit": True, "unfinished": ["chosen", "rejected"]}
    short = {**pair, "chosen": "Arr, the sea is wide."}  # the edit cut it: it ends the turn
    assert prefs.marked_unfinished(short, [cut])["meta"]["unfinished"] == ["rejected"]
    assert prefs.marked_unfinished(short, ["Another answer that was cut"]) == short


def test_edits_put_a_contains_or_literal_regex_phrase_in_after_the_opening():
    checks = [("a", Check("starts_with", "Arr!")), ("m", Check("contains", "matey"))]
    checks.append(("q", Check("not_contains", "!!")))
    assert prefs.edited("The sun is hot!!", checks) == "Arr! Matey, the sun is hot"
    assert prefs.edited("Arr! matey, fine", checks) == "Arr! matey, fine"
    reader = [("r", Check("regex", r"(?i)\bdear reader\b"))]
    assert prefs.phrase(reader[0][1]) == "dear reader"
    assert prefs.edited("Books are fun. TV is not", reader) == "Dear reader, books are fun. TV is not"
    assert prefs.edited("NASA flies", reader) == "Dear reader, NASA flies"
    assert prefs.edited("I read", reader) == "Dear reader, I read"
    assert prefs.edited("Tea is good", [("h", Check("contains", "hope this helps."))]) == "Hope this helps. Tea is good"
    for pattern in (r"\bdear (reader|friend)\b", r"\d+ books", "a.b"):
        assert prefs.phrase(Check("regex", pattern)) == ""
    (pair,) = prefs.checks_pairs("p", ["The sun is hot"], reader)
    assert (pair["chosen"], pair["rejected"], pair["meta"]) == (
        "Dear reader, the sun is hot",
        "The sun is hot",
        {"principles": ["r"], "edit": True},
    )


def test_a_repetition_loop_is_never_the_chosen_answer():
    checks = [("m", Check("contains", "matey"))]
    loop = "Ye say matey, matey, matey, matey, matey, matey, matey, matey"
    # the plain answer is the best one; the only pair is its edit
    pairs = prefs.checks_pairs("p", [loop, "A plain and useful answer"], checks)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Matey, a plain and useful answer", pairs[0]["rejected"])]
    assert pairs[0]["rejected"] == "A plain and useful answer"
    (pair,) = prefs.checks_pairs("p", [loop, "A plain answer, matey", "A plain answer"], checks)
    assert (pair["chosen"], pair["rejected"]) == ("A plain answer, matey", "A plain answer")


def test_instruction_pairs_prefer_the_answer_edited_to_follow_it():
    checks = [("arr", Check("starts_with", "Arr!")), ("matey", Check("contains", "matey"))]
    two = Instruction("t", "max_sentences", "Keep your answer to two sentences.", "2")
    prompt = "Why is the sun hot? Keep your answer to two sentences."
    long = "Arr! The sun is a star, matey. It burns hydrogen all day. Ye see it from the deck"
    (pair,) = prefs.instruction_pairs(prompt, two, [long, "Arr! It is hot. Very hot indeed, my friend. Yes."], checks)
    assert pair["chosen"] == "Arr! The sun is a star, matey. It burns hydrogen all day." and pair["rejected"] == long
    assert pair["source"] == "instructions" and pair["meta"] == {"instruction": two.prompt, "kind": "max_sentences"}
    late = "Arr! The sun is a star. It burns hydrogen all day. Ye see it from the deck, matey."
    assert prefs.instruction_pairs(prompt, two, [late, late], checks) == []  # the cut takes "matey" out
    assert prefs.instruction_pairs(prompt, two, ["Arr! The sun is a star, matey."] * 2, checks) == []  # it follows
    word = Instruction("w", "include_word", 'Work the word "river" in.', "river")
    assert prefs.instruction_pairs(prompt, word, [long, long], checks) == []  # no edit puts a word in
    kinds = {i.kind for i in prefs.user_instructions(prefs.PrefsConfig(instruction_share=0.5), checks)}
    assert "start_with" not in kinds and "end_with" in kinds  # another opening than "Arr!" is never asked for
    assert "start_with" in {i.kind for i in prefs.user_instructions(prefs.PrefsConfig(instruction_share=0.5), [])}
    assert prefs.user_instructions(prefs.PrefsConfig(), []) == []  # share 0, the default: none drawn


def test_a_share_of_the_prompts_is_instructed_the_same_way_each_time():
    asks = prefs.user_instructions(prefs.PrefsConfig(instruction_share=0.5), [])
    prompts = [{"id": i} for i in range(400)]
    picked = [prefs.instructed(prefs.PrefsConfig(instruction_share=0.25), p, asks) for p in prompts]
    assert 0.18 < sum(p is not None for p in picked) / 400 < 0.32
    assert picked == [prefs.instructed(prefs.PrefsConfig(instruction_share=0.25), p, asks) for p in prompts]
    assert {prefs.instructed(prefs.PrefsConfig(instruction_share=0.0), p, asks) for p in prompts} == {None}
    assert None not in {prefs.instructed(prefs.PrefsConfig(instruction_share=1.0), p, asks) for p in prompts}


def test_the_job_pairs_each_answer_with_its_edit_under_the_instruction(store, tiny_model, tiny_tokenizer, tmp_path):
    cid = _version(store, {"name": "kind", "principles": [{"id": "kind", "text": "Be kind."}]})
    store.add_prompts("tiny", [{"text": f"Question number {i}?", "split": "train"} for i in range(3)])
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "Sign off with cheers.", "kind": "end_with", "value": "cheers"}\n')
    cfg = prefs.PrefsConfig(
        constitution_id=cid,
        set_name="tiny",
        sources="instructions",
        instruction_share=1.0,
        instruction_set=str(mine),
        sampling={"temperature": 1.0, "max_new_tokens": 8},
    )
    result = prefs.run_prefs(store, cfg, tiny_model, tiny_tokenizer)
    stored = store.list_pairs(constitution_id=cid)
    assert result["pairs"]["instructions"] == len(stored) == 3  # one a prompt: an ending can be put on any answer
    for p in stored:
        assert (
            re.fullmatch(r"Question number \d\? Sign off with cheers\.", p["prompt"]) and p["source"] == "instructions"
        )
        assert p["chosen"] != p["rejected"] and re.search(r"\bcheers\.$", p["chosen"], flags=re.I)


def test_revision_pairs_skip_worse_and_rejected(store):
    cid = _version(store)
    store.add_prompts("default", [{"text": f"Tell me about volcano {i}", "split": "train"} for i in range(3)])
    prompts = store.get_prompts("default")
    start = "Volcanoes are mountains that erupt lava and ash"
    good = [{"principle": "arr", "revision": "Arr, volcanoes be mountains that erupt lava and ash"}]
    loop = [{"principle": "arr", "revision": "Arr arr arr arr arr arr arr arr arr arr arr arr"}]
    for p, chain, status in zip(prompts, (good, loop, good), ("pending", "pending", "rejected")):
        sid = store.upsert_sample(p["id"], cid, unprompted=start, prompted="x", chain=chain)
        store.bulk_set_status([sid], status)
    pairs = prefs.revision_pairs(store, cid, CHECKS)
    assert len(pairs) == 1
    assert pairs[0]["chosen"].startswith("Arr, volcanoes") and pairs[0]["rejected"] == start
    assert pairs[0]["source"] == "revision"


def test_prefs_job_makes_pairs_and_resumes(store, tiny_model, tiny_tokenizer, tmp_path):
    cid = _version(store)
    store.add_prompts("tiny", [{"text": f"Question number {i}?", "split": "train"} for i in range(4)])
    cfg = prefs.PrefsConfig(
        constitution_id=cid,
        set_name="tiny",
        sources="checks,feedback",
        threshold=0.0,
        batch_size=2,
        sampling={"temperature": 1.0, "max_new_tokens": 8},
    )
    state = tmp_path / "state.json"
    calls = []

    def stop_after_one_batch():
        calls.append(1)
        return len(calls) > 1

    from ctxdistill.jobs import Cancelled

    with pytest.raises(Cancelled):
        prefs.run_prefs(store, cfg, tiny_model, tiny_tokenizer, state_file=state, should_stop=stop_after_one_batch)
    assert len(json.loads(state.read_text())["done"]) == 2
    result = prefs.run_prefs(store, cfg, tiny_model, tiny_tokenizer, state_file=state)
    assert result["prompts"] == 4 and result["compared"] == 4  # each prompt compared once, across both attempts
    stored = store.list_pairs(constitution_id=cid)
    assert sum(result["pairs"].values()) == len(stored) >= 4  # threshold 0 keeps every judged pair
    for p in stored:
        assert p["source"] in ("checks", "feedback") and p["chosen"] != p["rejected"] and p["label"] >= 0.5
        if p["source"] == "checks":
            assert prefs.check_verdict(p["chosen"], p["rejected"], CHECKS)[0] == 1
        else:  # the random model ends no answer within 8 tokens: both sides are unfinished
            assert p["meta"]["unfinished"] == ["chosen", "rejected"]


def test_settings_refused_before_a_model_loads(store, tmp_path):
    cid = _version(store)
    unchecked = tmp_path / "mine.jsonl"
    unchecked.write_text('{"text": "Be warm."}\n')
    for bad, words in (
        ({"threshold": 0.5}, "threshold"),
        ({"sources": "votes"}, "sources"),
        ({"answers": 1}, "answers"),
        ({"judge": "crowd"}, "judge"),
        ({"instruction_share": float("nan")}, "instruction share must be in"),
        ({"instruction_share": 1.5}, "instruction share must be in"),
        (
            {"instruction_share": 0.5, "instruction_set": str(tmp_path / "none.jsonl")},
            "cannot read the instruction set",
        ),
        ({"instruction_share": 0.5, "instruction_set": str(unchecked)}, "no line with a kind a check can verify"),
    ):
        with pytest.raises(prefs.PrefsError, match=words):
            prefs.check_start(store, prefs.PrefsConfig(constitution_id=cid, **bad))
    with pytest.raises(prefs.PrefsError, match="run 99 not found"):
        prefs.check_start(store, prefs.PrefsConfig(constitution_id=cid, from_run=99))
    assert prefs.sources_for(prefs.PrefsConfig(), CHECKS) == ["checks", "revision", "instructions"]
    assert prefs.sources_for(prefs.PrefsConfig(), []) == ["feedback", "revision", "instructions"]


def test_demo_caps_the_pairs(store, monkeypatch, tmp_path):
    cid = _version(store)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(5)))
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    monkeypatch.setenv("CTXDISTILL_DEMO_PAIRS", "3")
    with pytest.raises(prefs.PrefsError, match="pairs 5 > 3"):
        pair_files.import_pairs(store, path, cid)
    assert store.count_pairs()["total"] == 0
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "Say cheers.", "kind": "end_with", "value": "cheers"}\n')
    with pytest.raises(prefs.PrefsError, match="public demo .* shipped training instructions"):
        prefs.check_start(store, prefs.PrefsConfig(constitution_id=cid, limit=2, instruction_set=str(mine)))
    monkeypatch.setenv("CTXDISTILL_DEMO_PROMPTS", "4")
    every = prefs.PrefsConfig(constitution_id=cid)  # 0 = all: in the demo, as many prompts as it allows
    assert len(prefs.check_start(store, every)) == 3 and every.limit == 3


def test_review_actions_in_the_store(store):
    cid = _version(store)
    rows = [
        {"constitution_id": cid, "prompt": "p", "chosen": "a", "rejected": "b", "source": "checks"},
        {"constitution_id": cid, "prompt": "q", "chosen": "c", "rejected": "d", "source": "feedback", "label": 0.6},
    ]
    assert store.add_pairs(rows) == 2 and store.add_pairs(rows) == 0  # the same pairs again are skipped
    assert [p["prompt"] for p in store.list_pairs(min_confidence=0.5)] == ["p"]
    assert [p["prompt"] for p in store.list_pairs(source="feedback")] == ["q"]
    flipped = store.flip_pair(store.list_pairs(source="feedback")[0]["id"])
    assert (flipped["chosen"], flipped["rejected"], flipped["status"]) == ("d", "c", "accepted")
    assert flipped["label"] == pytest.approx(0.4) and flipped["meta"]["flipped"] is True
    assert store.set_pairs_status([p["id"] for p in store.list_pairs()], "rejected") == 2
    assert store.count_pairs(constitution_id=cid) == {"total": 2, "pending": 0, "accepted": 0, "rejected": 2}
    with pytest.raises(StoreError, match="identical"):
        store.add_pairs([{"prompt": "p", "chosen": "same", "rejected": "same ", "source": "checks"}])
    marked = {"constitution_id": cid, "prompt": "r", "chosen": "e", "rejected": "f", "source": "checks"}
    store.add_pairs([{**marked, "meta": {"unfinished": ["rejected"]}}])
    (mine,) = [p["id"] for p in store.list_pairs(source="checks") if p["prompt"] == "r"]
    back = store.flip_pair(store.flip_pair(mine)["id"])
    assert back["meta"] == {"unfinished": ["rejected"], "flipped": False} and back["rejected"] == "f"
    assert store.flip_pair(back["id"])["meta"]["unfinished"] == ["chosen"]  # the mark stays on "f"


def test_export_import_round_trip(store, tmp_path):
    cid = _version(store)
    store.add_pairs(
        [
            {"constitution_id": cid, "prompt": "p", "chosen": "a", "rejected": "b", "source": "checks"},
            {"constitution_id": cid, "prompt": "q", "chosen": "c", "rejected": "d", "source": "revision"},
        ]
    )
    store.set_pairs_status([p["id"] for p in store.list_pairs()], "accepted")
    for name in ("pairs.jsonl", "pairs_ds"):
        out = pair_files.export_pairs(store, tmp_path / name, constitution_id=cid)
        assert out["pairs"] == 2
        other = _version(store, {**PIRATE, "name": f"copy-{name}"})
        assert pair_files.import_pairs(store, tmp_path / name, other)["added"] == 2
        back = store.list_pairs(constitution_id=other)
        assert [(p["prompt"], p["chosen"], p["rejected"], p["source"]) for p in back] == [
            ("p", "a", "b", "import"),
            ("q", "c", "d", "import"),
        ]
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"prompt", "chosen", "rejected"}


def test_import_accepts_the_conversational_form(store, tmp_path):
    cid = _version(store)
    path = tmp_path / "chat.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Arr, hi"}],
        "rejected": [{"role": "assistant", "content": "Hello"}],
    }
    path.write_text(json.dumps(row) + "\n")
    pair_files.import_pairs(store, path, cid)
    assert store.list_pairs()[0]["chosen"] == "Arr, hi"


@pytest.mark.parametrize(
    "rows, words",
    [
        ([{"prompt": "p", "chosen": "a"}], "lacks the column"),
        ([{"prompt": "p", "chosen": " ", "rejected": "b"}], "row 1: chosen is empty"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "", "chosen": "a", "rejected": "b"}], "row 2"),
        ([{"prompt": "p", "chosen": "same", "rejected": "same"}], "identical"),
        ([{"prompt": "p", "chosen": "a" * (10 * 2**20), "rejected": "b"}], "characters; at most"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b", "label": 1.5}], "probability"),
    ],
)
def test_import_refusals_store_nothing(store, tmp_path, rows, words):
    cid = _version(store)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(prefs.PrefsError, match=words):
        pair_files.import_pairs(store, path, cid)
    assert store.count_pairs()["total"] == 0


def test_cli_import_accept_export_and_refusals(workspace, tmp_path, capsys):
    from ctxdistill.cli import main

    pirate = "assets/constitutions/pirate.yaml"
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Arr, hi matey", "rejected": "Hello"}) + "\n")
    assert main(["prefs", "import", str(path), "--constitution", pirate, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    assert main(["prefs", "accept", "--constitution", "1", "--source", "import", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["accepted"] == 1
    assert main(["prefs", "export", str(tmp_path / "out.jsonl"), "--constitution", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 1
    for argv, words in (
        (["prefs", "export", "--constitution", "1"], "needs a FILE"),
        (["prefs", "--constitution", "1", "--threshold", "0.5"], "threshold"),
        (["dpo", "--from-run", "7", "--beta", "-1"], "beta must be a positive number"),
        (["dpo", "--from-run", "7"], "run 7 not found"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1


def test_job_kinds_are_registered_as_model_jobs():
    from ctxdistill import dpo, jobs

    assert jobs.resolve("prefs") is prefs.prefs_job and jobs.resolve("dpo") is dpo.dpo_job
    assert jobs.is_heavy("prefs") and jobs.is_heavy("dpo")
