"""Critique -> revision chains on the tiny model."""

import pytest

from ctxdistill import revise as rv
from ctxdistill.constitution import Constitution, Principle, content_hash, to_dict
from ctxdistill.revise import ReviseConfig, pick_principle, run_revise

EXAMPLES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Arr, hi matey"}]


def constitution(examples=()):
    return Constitution(
        name="pirate",
        examples=list(examples),
        principles=[
            Principle("arr", "Begin with Arr!", critique="Does it begin with Arr?", revision="Make it begin with Arr!"),
            Principle("matey", "Call the user matey."),  # no requests: the defaults are used
        ],
    )


def seeded(store, examples=(), n=3):
    c = constitution(examples)
    cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
    store.add_prompts("s", [{"text": f"Question {i}?"} for i in range(n)])
    for p in store.get_prompts("s"):
        store.upsert_sample(p["id"], cid, 0, prompted=f"prompted {p['id']}", unprompted=f"plain {p['id']}")
    return cid


def test_chain_rounds_cycle_principles_and_final_follows_last_revision(store, tiny_model, tiny_tokenizer):
    cid = seeded(store)
    seen = []
    cfg = ReviseConfig(constitution_id=cid, rounds=3, batch_size=2, sampling={"max_new_tokens": 5})
    result = run_revise(store, cfg, tiny_model, tiny_tokenizer, progress=lambda *a: seen.append(a[:2]))
    # tokens: 3 samples x 3 rounds x (critique + revision) x 5, moving at each decode step
    assert result["rounds_done_now"] == 9 and seen[0] == (0, 90) and seen[-1] == (90, 90)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and any(d % 10 for d, _ in seen)
    for s in store.list_samples(constitution_id=cid):
        chain = s["chain"]
        assert [step["principle"] for step in chain] == ["arr", "matey", "arr"]
        assert chain[0]["critique_request"] == "Does it begin with Arr?"
        assert "Call the user matey." in chain[1]["critique_request"]  # default request
        assert all({"critique", "revision", "revision_request", "cut_off"} <= set(step) for step in chain)
        last = next((st["revision"] for st in reversed(chain) if st["revision"]), s["prompted"])
        assert s["final"] == last and s["meta"]["revise_start"] == "prompted"


def test_start_answer_and_few_shot_examples_reach_the_model(store, tiny_model, tiny_tokenizer, monkeypatch):
    cid = seeded(store, EXAMPLES, n=2)
    calls = []
    real = rv.generate_rows

    def spy(model, tok, rows, cfg, **kw):
        calls.append((rows, kw["examples"]))
        return real(model, tok, rows, cfg, **kw)

    monkeypatch.setattr(rv, "generate_rows", spy)
    cfg = ReviseConfig(constitution_id=cid, start="prompted", sampling={"max_new_tokens": 3})
    run_revise(store, cfg, tiny_model, tiny_tokenizer)
    (critique_rows, examples), (revision_rows, _) = calls
    assert examples == EXAMPLES
    conversation = critique_rows[0][1]
    assert conversation[1] == {"role": "assistant", "content": f"prompted {store.list_samples()[0]['prompt_id']}"}
    assert conversation[2]["content"] == "Does it begin with Arr?"
    assert revision_rows[0][1][-1]["content"] == "Make it begin with Arr!"
    assert critique_rows[0][0].startswith("Begin with Arr!")  # the constitution is the system prompt


def test_resume_adds_only_missing_rounds_and_keeps_edits(store, tiny_model, tiny_tokenizer):
    cid = seeded(store)
    cfg = ReviseConfig(constitution_id=cid, rounds=1, sampling={"max_new_tokens": 4})
    run_revise(store, cfg, tiny_model, tiny_tokenizer)
    first = {s["id"]: s["chain"][0] for s in store.list_samples()}
    s = store.list_samples()[0]
    store.update_sample(s["id"], s["version"], final="My own words.")
    cfg.rounds = 2
    result = run_revise(store, cfg, tiny_model, tiny_tokenizer)
    assert result["rounds_done_now"] == 3
    for s in store.list_samples():
        assert len(s["chain"]) == 2 and s["chain"][0] == first[s["id"]]
    assert store.list_samples()[0]["final"] == "My own words."  # a pipeline write keeps the edit
    assert run_revise(store, cfg, tiny_model, tiny_tokenizer)["rounds_done_now"] == 0


def test_a_stop_during_the_revisions_keeps_the_rounds_that_ended(store, tiny_tokenizer, monkeypatch):
    """Stopped while revising three samples: the first's revision had ended, the others' had not.
    The first keeps its round; a resume revises the other two only."""
    from ctxdistill.jobs import Cancelled

    cid = seeded(store)
    calls = []

    def fake_rows(model, tok, rows, cfg, *, on_token=None, **kw):
        calls.append(len(rows))
        if len(calls) == 2:  # the first round's revisions: row 0 ended at 2 tokens, the others run on
            on_token(3, [[5, 6], [5, 6, 7, 8], [5, 6, 7, 8]])
        return [[5, 6] for _ in rows]

    monkeypatch.setattr(rv, "generate_rows", fake_rows)
    monkeypatch.setattr(rv, "split_rows", lambda *a: (None,))
    monkeypatch.setattr(rv, "Prefixes", lambda model, ids: type("P", (), {"ids": ids})())
    cfg = ReviseConfig(constitution_id=cid, rounds=1, keep_if_worse=False, sampling={"max_new_tokens": 8})
    with pytest.raises(Cancelled):
        run_revise(store, cfg, None, tiny_tokenizer, should_stop=lambda: len(calls) == 2)
    assert [len(s["chain"]) for s in store.list_samples()] == [1, 0, 0]
    assert run_revise(store, cfg, None, tiny_tokenizer)["revised_now"] == 2 and calls[2:] == [2, 2]
    assert [len(s["chain"]) for s in store.list_samples()] == [1, 1, 1]


def test_random_order_is_reproducible():
    ps = constitution().principles
    picks = [pick_principle(ps, "random", 7, sid, r).id for sid in range(20) for r in range(3)]
    assert picks == [pick_principle(ps, "random", 7, sid, r).id for sid in range(20) for r in range(3)]
    assert set(picks) == {"arr", "matey"}


def test_bad_configs_and_nothing_to_revise(store, tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="rounds must be between 1 and 8.*order must be.*start must be"):
        ReviseConfig(rounds=0, order="sometimes", start="middle").validate()
    c = constitution()
    cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
    with pytest.raises(ValueError, match="no samples to revise"):
        run_revise(store, ReviseConfig(constitution_id=cid), tiny_model, tiny_tokenizer)


@pytest.mark.parametrize("keep", [True, False])
def test_a_revision_worse_than_its_start_is_kept_out_of_the_final_text(
    store, tiny_model, tiny_tokenizer, monkeypatch, keep
):
    cid = seeded(store, n=2)
    loop = "the sun the sun " * 8
    monkeypatch.setattr(rv, "generate_rows", lambda model, tok, rows, cfg, **kw: [tok.encode(loop)] * len(rows))
    cfg = ReviseConfig(constitution_id=cid, keep_if_worse=keep, sampling={"max_new_tokens": 200})
    run_revise(store, cfg, tiny_model, tiny_tokenizer)
    for s in store.list_samples():
        start, (step,) = rv.start_answer(s, cfg.start), s["chain"]
        if keep:
            assert step["revision"] == s["final"] == start and step["discarded"] == loop.strip()
            assert step["worse"] == ["loop", "lost_content"] and "worse" not in s["flags"]
        else:
            assert s["final"] == loop.strip() and "discarded" not in step
            assert s["flags"][:3] == ["worse", "worse:loop", "worse:lost_content"]
