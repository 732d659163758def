"""A Distill run stopped while sampling the teacher keeps each answer that had ended, not only whole
batches (engine.sample_answers), and a resume samples only the rest."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from ctxdistill import engine


def fake_pair():
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode=True: None)
    tokenizer = SimpleNamespace(eos_token="<end>", convert_tokens_to_ids=lambda token: 99)
    return SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        teacher_mode=contextlib.nullcontext,
        system="Answer in three short lines.",
        examples=[],
        teacher_prefixes=None,
        keep_teacher=lambda example, states: None,
    )


def test_a_stop_keeps_the_answers_of_the_batch_that_had_ended(monkeypatch):
    calls, kept = [], []

    def fake_rows(model, tok, rows, cfg, *, on_token=None, states=None, **kwargs):
        calls.append(len(rows))
        # rows 0 and 2 ended (end-of-turn) by step 3; rows 1 and 3 run on
        on_token(3, [[5, 6], [5, 6, 7, 8], [5], [5, 6, 7, 8]])
        return [[5, 6] for _ in rows]

    monkeypatch.setattr(engine, "generate_rows", fake_rows)
    cfg = SimpleNamespace(samples_per_prompt=1, sample_tokens=8, temperature=1.0)
    prompts = [f"Question {i}?" for i in range(4)]
    with pytest.raises(engine.SamplingStopped) as stopped:
        engine.sample_answers(
            fake_pair(), prompts, cfg, seed=0, should_stop=lambda: True, on_batch=lambda done: kept.append(done)
        )
    assert stopped.value.done == {0: [5, 6, 99], 2: [5, 99]} and kept == [stopped.value.done]
    sampled = []

    def resume_rows(model, tok, rows, cfg, *, states=None, **kwargs):
        sampled.extend(p for _, p in rows)
        states.extend([[0] * 8 for _ in rows])
        return [[7] for _ in rows]

    monkeypatch.setattr(engine, "generate_rows", resume_rows)
    resumed = engine.sample_answers(fake_pair(), prompts, cfg, seed=0, kept=stopped.value.done)
    assert sampled == ["Question 1?", "Question 3?"]  # only the rows that had not ended
    assert [e.prompt for e in resumed] == prompts and [len(e.answer) for e in resumed] == [3, 2, 2, 2]
