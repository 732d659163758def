"""Prompt-set import (every format and the bad inputs), and the sampling job: progress,
cancel, a worker killed mid-run, resume."""

import json
import os
import signal
import time

import pytest

from ctxdistill import jobs
from ctxdistill.constitution import content_hash, load, to_dict
from ctxdistill.generate import GenerateConfig, run_generate
from ctxdistill.jobs import Cancelled
from ctxdistill.prompts import MAX_PROMPT_CHARS, ImportFileError, ensure_default_prompts, import_prompts, read_table
from ctxdistill.store import Store

PIRATE = "assets/constitutions/pirate.yaml"


def pirate_version(store) -> int:
    c = load(PIRATE)
    return store.save_constitution(c.name, to_dict(c), content_hash(c))


def add_set(store, n: int, name: str = "s") -> None:
    store.add_prompts(name, [{"text": f"Question number {i}: what is {i} plus {i}?"} for i in range(n)])


# --------------------------------------------------------------------------- import


def test_import_each_format(store, tmp_path):
    (tmp_path / "a.csv").write_text(
        "id,question,kind\n1,How do ships float?,science\n2,Why is the sea salty?,"
        "science\n3,How do ships float?,dup\n4,,empty\n",
        encoding="utf-8",
    )
    r = import_prompts(store, "csv", tmp_path / "a.csv", column="question", category_column="kind", heldout_fraction=0)
    assert (r["added"], r["duplicates"], r["empty"], r["n_train"]) == (2, 1, 1, 2)
    assert store.get_prompts("csv")[0]["category"] == "science"

    (tmp_path / "b.jsonl").write_text('{"prompt": "One?", "split": "test"}\n\n"Two?"\n{"prompt": "Three?"}\n')
    r = import_prompts(store, "jsonl", tmp_path / "b.jsonl", column="prompt", heldout_fraction=0)
    assert r["added"] == 2 and r["empty"] == 1  # the bare string has no 'prompt' column
    assert [p["text"] for p in store.get_prompts("jsonl", split="heldout")] == ["One?"]

    (tmp_path / "c.txt").write_text("First line?\n\n  Second line?  \nFirst line?\n")
    assert import_prompts(store, "txt", tmp_path / "c.txt")["added"] == 2
    assert [p["text"] for p in store.get_prompts("txt")] == ["First line?", "Second line?"]

    (tmp_path / "d.json").write_text(json.dumps([{"text": "J1"}, "J2"]))
    assert import_prompts(store, "json", tmp_path / "d.json")["added"] == 2

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["P1", "P2", "P1"], "n": [1, 2, 3]}), tmp_path / "e.parquet")
    r = import_prompts(store, "parquet", tmp_path / "e.parquet")  # column guessed: instruction
    assert (r["added"], r["duplicates"]) == (2, 1)

    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["D1", "D2"]}),
            "test": datasets.Dataset.from_dict({"text": ["D3"]}),
        }
    ).save_to_disk(tmp_path / "ds")
    r = import_prompts(store, "ds", tmp_path / "ds")
    assert (r["n_train"], r["n_heldout"]) == (2, 1)


def test_hash_split_is_stable_and_roughly_the_fraction(store, tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(f"prompt {i}" for i in range(400)))
    r = import_prompts(store, "a", tmp_path / "p.txt", heldout_fraction=0.25)
    assert 60 < r["n_heldout"] < 140
    import_prompts(store, "b", tmp_path / "p.txt", heldout_fraction=0.25)
    split = lambda name: {p["text"]: p["split"] for p in store.get_prompts(name)}
    assert split("a") == split("b")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", "is empty"),
        ("blank.jsonl", b"\n\n  \n", "is empty"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "broken"\n', "line 2 is not valid JSON"),
        ("latin1.txt", "caf\u00e9 au lait?\n".encode("latin-1"), "not UTF-8"),
        ("cols.csv", b"question\nWhy?\n", "no prompt column 'prompt'"),
        ("ragged.csv", b"text\nfine\nbad,extra\n", "more fields than the header"),
        ("split.csv", b"text,split\nA?,train\nB?,banana\n", "split 'banana'"),
        ("numbers.json", b"[1, 2]", "expected an object or a string"),
        ("notparquet.parquet", b"PAR1 garbage", "not a readable Parquet file"),
        ("data.xlsx", b"x", "unknown file type"),
    ],
)
def test_bad_files_import_nothing(store, tmp_path, name, content, message):
    store.add_prompts("keep", [{"text": "already here"}])
    (tmp_path / name).write_bytes(content)
    column = "prompt" if name == "cols.csv" else None
    with pytest.raises(ImportFileError, match=message):
        import_prompts(store, "new", tmp_path / name, column=column)
    assert [s["name"] for s in store.prompt_sets()] == ["keep"]


def test_huge_prompt_is_refused_and_nothing_half_imported(store, tmp_path):
    rows = [{"text": "short one"}, {"text": "x" * 100_000}, {"text": "another"}]
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ImportFileError, match=f"100,000 characters long; the limit is {MAX_PROMPT_CHARS:,}"):
        import_prompts(store, "big", tmp_path / "big.jsonl")
    assert store.prompt_sets() == []


def test_missing_file_and_column_picker_message(store, tmp_path):
    with pytest.raises(ImportFileError, match="file not found"):
        import_prompts(store, "x", tmp_path / "nope.csv")
    (tmp_path / "two.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ImportFileError, match="pick the prompt column; the columns are: a, b"):
        import_prompts(store, "x", tmp_path / "two.csv")
    assert read_table(tmp_path / "two.csv") == [{"a": "1", "b": "2"}]


def test_shipped_sets_are_seeded_once(store):
    added = ensure_default_prompts(store)
    assert added > 270
    sets = {s["name"]: s for s in store.prompt_sets()}
    assert sorted(sets) == ["default", "short-answers"]
    assert sets["default"]["n_heldout"] > 0 and sets["short-answers"]["n_train"] == 72
    assert ensure_default_prompts(store) == 0


def test_no_capability_question_is_trained_on():
    """The capability set scores whether the student still answers short questions: none of its
    questions, nor its two closing requests, is among the shipped train prompts (the default set's and
    the short-answer replay set's)."""
    import re

    from ctxdistill.capability import load_items
    from ctxdistill.prompts import SHIPPED_SETS

    closings = ("Answer with just the answer.", "Answer with just the number.")

    def words(text):
        return " ".join(re.findall(r"\w+", text.lower()))

    asked = {words(it.prompt.replace(closings[0], "").replace(closings[1], "")) for it in load_items()}
    assert len(asked) > 120
    for path in SHIPPED_SETS.values():
        trained = [r["text"] for r in read_table(path) if r.get("split") == "train"]
        assert not [t for t in trained if any(words(t).startswith(q) for q in asked)], path
        assert not [t for t in trained if any(c in t for c in closings)], path


# --------------------------------------------------------------------------- the job, in-process


def test_generate_writes_samples_skips_heldout_and_reports_progress(store, tiny_model, tiny_tokenizer):
    cid = pirate_version(store)
    store.add_prompts("s", [{"text": f"Train {i}?"} for i in range(5)] + [{"text": "Held out?", "split": "heldout"}])
    seen = []
    cfg = GenerateConfig(
        set_name="s", constitution_id=cid, batch_size=2, sampling={"max_new_tokens": 6, "temperature": 0.8, "n": 2}
    )
    result = run_generate(store, cfg, tiny_model, tiny_tokenizer, progress=lambda *a: seen.append(a))
    samples = store.list_samples(constitution_id=cid)
    assert len(samples) == 10 and result["samples_written"] == 10
    assert all(s["split"] == "train" for s in samples)
    assert {s["idx"] for s in samples} == {0, 1}
    assert all(s["meta"]["tokens"] <= 6 and "cut_off" in s["meta"] for s in samples)
    unprompted = {}
    for s in samples:  # one unprompted answer per prompt
        assert unprompted.setdefault(s["prompt_id"], s["unprompted"]) == s["unprompted"]
    # progress counts tokens: 5 prompts x (2 samples + 1 unprompted) x 6, each decode step moving it
    done = [d for d, _, _ in seen]
    assert all(t == 90 for _, t, _ in seen) and done == sorted(done) and done[0] == 0 and done[-1] == 90
    assert len(set(done)) > 4 and seen[-1][2].startswith("90/90 tokens")  # it moves inside a batch
    assert all("cut_off" in s["flags"] for s in samples if s["meta"]["cut_off"] and s["final"])
    again = run_generate(store, cfg, tiny_model, tiny_tokenizer)
    assert again["answered_now"] == 0 and len(store.list_samples(constitution_id=cid)) == 10


def test_generate_is_reproducible_and_batch_independent(store, tiny_model, tiny_tokenizer, tmp_path):
    add_set(store, 4)
    other = Store(tmp_path / "other")
    add_set(other, 4)
    texts = []
    for s, batch in ((store, 4), (other, 1)):
        cfg = GenerateConfig(
            set_name="s",
            constitution_id=pirate_version(s),
            batch_size=batch,
            sampling={"max_new_tokens": 5, "temperature": 1.0, "seed": 3},
        )
        run_generate(s, cfg, tiny_model, tiny_tokenizer)
        texts.append([x["prompted"] for x in s.list_samples()])
    assert texts[0] == texts[1]


def test_cancel_between_batches_then_resume(store, tiny_model, tiny_tokenizer):
    cid = pirate_version(store)
    add_set(store, 6)
    cfg = GenerateConfig(set_name="s", constitution_id=cid, batch_size=2, sampling={"max_new_tokens": 4})
    with pytest.raises(Cancelled):
        run_generate(store, cfg, tiny_model, tiny_tokenizer, should_stop=lambda: len(store.list_samples()) >= 4)
    assert len(store.list_samples()) == 4
    assert run_generate(store, cfg, tiny_model, tiny_tokenizer)["answered_now"] == 2


def test_a_stop_inside_a_batch_keeps_the_prompts_whose_answers_ended(store, monkeypatch):
    """Stopped at decode step 3 of a batch of three prompts: the first's answers (sample and unprompted)
    had ended, the second's unprompted one had not, the third's sample had not. Only the first is kept,
    and a resume answers the other two."""
    from ctxdistill import generate

    cid = pirate_version(store)
    add_set(store, 3)
    calls = []

    def fake_rows(model, tokenizer, rows, cfg, *, on_token=None, **kwargs):
        calls.append([p for _, p in rows])
        if len(calls) == 1:  # rows: 3 samples, then 3 unprompted answers; ended rows are shorter than 4
            on_token(3, [[5, 6], [5, 6, 7, 8], [5, 6, 7, 8], [5], [5, 6, 7, 8], [5, 6]])
        return [[5, 6] for _ in rows]

    monkeypatch.setattr(generate, "generate_rows", fake_rows)
    tokenizer = type("T", (), {"decode": lambda self, ids, skip_special_tokens: " ".join(map(str, ids))})()
    monkeypatch.setattr(generate, "split_rows", lambda *a: (None,))
    monkeypatch.setattr(generate, "Prefixes", lambda model, ids: type("P", (), {"ids": ids})())
    cfg = GenerateConfig(set_name="s", constitution_id=cid, batch_size=8, sampling={"max_new_tokens": 8})
    with pytest.raises(Cancelled):
        run_generate(store, cfg, None, tokenizer, should_stop=lambda: len(calls) == 1)
    kept = store.list_samples()
    assert [(s["prompt"], s["prompted"], s["unprompted"]) for s in kept] == [
        ("Question number 0: what is 0 plus 0?", "5 6", "5")
    ]
    assert run_generate(store, cfg, None, tokenizer)["answered_now"] == 2
    assert len(calls[1]) == 4 and len(store.list_samples()) == 3


def test_config_errors():
    with pytest.raises(ValueError, match="unknown generate option"):
        GenerateConfig.from_dict({"set": "x"})
    with pytest.raises(ValueError, match="max new tokens"):
        GenerateConfig(sampling={"max_new_tokens": 0}).validate()
    with pytest.raises(ValueError, match="batch size"):
        GenerateConfig(batch_size=0).validate()


# --------------------------------------------------------------------------- the job, in a worker


def _until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_worker_killed_mid_run_fails_fast_and_resume_does_only_the_rest(store, tiny_checkpoint):
    cid = pirate_version(store)
    add_set(store, 30)
    # batch of one and long answers: the job takes several seconds, so it can be killed mid-run
    cfg = GenerateConfig(
        set_name="s", constitution_id=cid, batch_size=1, model=str(tiny_checkpoint), sampling={"max_new_tokens": 48}
    )
    job_id = jobs.submit(store, "generate", cfg.to_dict())
    _until(lambda: len(store.list_samples()) >= 3, timeout=120)  # a worker starts slowly on a busy machine
    os.killpg(store.get_job(job_id)["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    job = _until(lambda: (j := jobs.get(store, job_id))["state"] != "running" and j, timeout=5)
    assert job["state"] == "failed" and "interrupted" in job["error"]
    assert time.monotonic() - killed_at < 5
    before = {s["id"]: s["version"] for s in store.list_samples()}
    assert 3 <= len(before) < 30
    assert all("tokens" in s["meta"] for s in store.list_samples())  # nothing half-written

    jobs.resume(store, job_id)
    job = jobs.wait(store, job_id, timeout=90)
    assert job["state"] == "done", job["error"]
    assert job["attempts"] == 2 and job["result"]["answered_now"] == 30 - len(before)
    after = store.list_samples()
    assert len(after) == 30
    assert {s["id"]: s["version"] for s in after if s["id"] in before} == before  # finished work untouched


def test_embedded_model_answers_with_the_constitution(store, smol):
    model, tokenizer = smol
    cid = pirate_version(store)
    store.add_prompts("s", [{"text": "What is the capital of France?"}, {"text": "How do I boil an egg?"}])
    cfg = GenerateConfig(set_name="s", constitution_id=cid, sampling={"max_new_tokens": 24})
    run_generate(store, cfg, model, tokenizer)
    samples = store.list_samples()
    assert len(samples) == 2 and all(s["prompted"] and s["unprompted"] for s in samples)
    assert all(s["prompted"] != s["unprompted"] for s in samples)
    assert any("failed_check:matey" not in s["flags"] for s in samples)  # the teacher says "matey"
