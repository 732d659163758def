"""How a job's progress reads (jobs.Meter): no rate nor ETA before the phase has measured something,
and the whole job's ETA beside the phase's where the job knows what comes after."""

from __future__ import annotations

import pytest

from ctxdistill import jobs
from ctxdistill.jobs import Meter


def clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: now[0])
    return now


def test_no_rate_nor_eta_until_the_phase_has_run_long_enough_and_done_enough(monkeypatch):
    now = clock(monkeypatch)
    meter = Meter(6080, "tokens", name="sampling")
    now[0] += 0.001
    assert meter.line(512) == "sampling: 512/6080 tokens"  # was "512000.0 tokens/s · ETA 0s"
    now[0] += 5.0
    assert meter.line(60) == "sampling: 60/6080 tokens"  # 5 s but under 2 % of the work: no rate yet
    assert meter.line(608).startswith("sampling: 608/6080 tokens · 121.6 tokens/s · ETA 45s")


def test_the_whole_jobs_eta_adds_what_comes_after_the_phase(monkeypatch):
    now = clock(monkeypatch)
    later = [None]
    meter = Meter(100, "answers", name="held-out", after=lambda: later[0])
    now[0] += 10.0
    assert meter.line(50) == "held-out: 50/100 answers · 5.0 answers/s · ETA 10s"  # the job cannot say
    later[0] = 170.0
    assert meter.line(50) == "held-out: 50/100 answers · 5.0 answers/s · ETA 10s · job ETA 3m 00s"


def test_a_training_runs_time_left_comes_from_its_timed_steps_or_its_prediction():
    from ctxdistill import estimate
    from ctxdistill.train import TrainConfig

    # steps 1-5 logged every 2 s, but step 3 also measured the held-out KL (5 s more)
    at = {1: 100.0, 2: 102.0, 3: 104.0, 4: 111.0, 5: 113.0}
    metrics = [{"step": s, "name": "loss", "value": 1.0, "at": t} for s, t in at.items()]
    metrics.append({"step": 3, "name": "heldout_kl", "value": 0.3, "at": 109.0})
    left = estimate.run_left(10, 5, metrics)
    assert left == 5 * (13.0 / 4) + 5.0  # the rest at the measured pace, and the final measurement
    assert estimate.run_left(10, 0, []) is None  # nothing timed, nothing measured: it cannot say
    cal = estimate.Calibration("fp32", load_s=2.0, step_s=1.0, score_s=0.5, decode_s=0.64, prefill_s=0.64)
    cfg = TrainConfig(steps=10, eval_every=5)
    predicted = estimate.predict_train(cal, cfg, 0, cfg.eval_prompts)
    assert estimate.run_left(10, 0, [], cal, cfg) == predicted["training"] + predicted["held-out"]


def test_the_prediction_counts_what_the_augmentations_add():
    """The teacher's answers to follow-ups and instructed prompts, the student's own samples at each step
    and the held-out probes each add their time; a plain run is predicted as before."""
    from dataclasses import replace

    from ctxdistill import estimate
    from ctxdistill.train import TrainConfig

    cal = estimate.Calibration("fp32", load_s=2.0, step_s=1.0, score_s=0.5, decode_s=0.64, prefill_s=0.64)
    plain = TrainConfig(steps=10, eval_every=5, attack_share=0.0, multiturn_share=0.0)
    base = estimate.predict_train(cal, plain, 100, 24)
    tokens = plain.sample_tokens
    answers = lambda n: estimate.predict_sampling(cal, n, tokens)
    assert base["sampling"] == pytest.approx(answers(100 * plain.samples_per_prompt + 24))
    talk = estimate.predict_train(cal, replace(plain, multiturn_share=0.5, instruction_share=0.25), 100, 24)
    assert talk["sampling"] - base["sampling"] == pytest.approx(answers(50 + 25 + 12))
    own = estimate.predict_train(cal, replace(plain, on_policy_share=0.5), 100, 24)
    rows = plain.batch_size * plain.grad_accum
    assert own["training"] - base["training"] == pytest.approx(10 * answers(rows // 2))
    attacked = estimate.predict_train(cal, replace(plain, attack_share=0.5), 100, 24)
    assert attacked["held-out"] > base["held-out"] and attacked["sampling"] == base["sampling"]
