"""The statistics of an evaluation, on plain numbers (numpy): bootstrap intervals, token-weighted
KL and gap closed, retention, check pass rates, length and refusals, blind-vote tallies.

Each estimate is ``{"value", "ci": [low, high], "n"}``, the interval a percentile bootstrap over
prompts (a prompt's tokens stay together). Tested on toy numbers in tests/test_evaluate.py.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .losses import gap_closed

CONDITIONS = ("base", "teacher")  # then one "run N" per student

VOTE_OUTCOMES = ("student", "teacher", "tie", "both_bad")


REFUSAL = re.compile(
    r"\b(I\s*(can(no|')t|cannot|am\s+(not\s+able|unable)|'m\s+(not\s+able|unable)|won't|will\s+not)\s+"
    r"(help|assist|provide|do|answer|comply|fulfil|fulfill|support)|I'm sorry,? but|I am sorry,? but|"
    r"as an AI\b|I must (decline|refuse))",
    re.I,
)


def bootstrap_ci(stat, *arrays, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``stat`` over items (prompts, votes).

    The per-item ``arrays`` are resampled together; ``stat`` maps arrays of shape (B, n) to (B,)
    so that all resamples are computed at once."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(stat(*[a[idx] for a in arrays]), dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def estimate(stat, *arrays, n_boot: int = 1000, seed: int = 0) -> dict:
    """{"value", "ci": [lo, hi], "n"}: ``stat`` on the data itself and its bootstrap interval."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return {"value": math.nan, "ci": [math.nan, math.nan], "n": 0}
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.asarray(stat(*[a[None] for a in arrays]))[0])
    return {"value": value, "ci": list(bootstrap_ci(stat, *arrays, n_boot=n_boot, seed=seed)), "n": n}


def _mean(x):
    return x.mean(1)


def _ratio(num, den):
    return num.sum(1) / den.sum(1)


def _closed(student, base):
    return 1 - student.sum(1) / base.sum(1)


def _delta(a, b, tokens):
    return (a.sum(1) - b.sum(1)) / tokens.sum(1)


def mean_estimate(values, n_boot: int = 1000) -> dict:
    """Mean of per-item values (a rate when they are 0/1)."""
    return estimate(_mean, values, n_boot=n_boot)


def token_kl(kls: list[list[float]], n_boot: int = 1000) -> dict:
    """Token-weighted mean of per-token KLs (nats/token), resampled by prompt."""
    return estimate(_ratio, [sum(k) for k in kls], [len(k) for k in kls], n_boot=n_boot)


def gap_closed_estimate(kl_student: list[list[float]], kl_base: list[list[float]], n_boot: int = 1000) -> dict:
    """1 - KL(teacher‖student) / KL(teacher‖base) along the same teacher tokens, resampled by prompt."""
    out = estimate(_closed, [sum(k) for k in kl_student], [sum(k) for k in kl_base], n_boot=n_boot)
    out["value"] = gap_closed(sum(map(sum, kl_base)), sum(map(sum, kl_student)))
    return out


def share_estimate(num, den, n_boot: int = 1000) -> dict:
    """Σ num / Σ den over items (a share of something), resampled by item, value and interval clipped to
    [0, 1]; "raw" is the unclipped value."""
    out = estimate(_ratio, num, den, n_boot=n_boot)
    clip = lambda v: min(1.0, max(0.0, v)) if math.isfinite(v) else v
    return {**out, "raw": out["value"], "value": clip(out["value"]), "ci": [clip(v) for v in out["ci"]]}


def retention(nll_base: list[list[float]], nll_model: list[list[float]], n_boot: int = 1000) -> dict:
    """NLL (nats/token) of the base model's own answers under the base and under another model (a
    student, or the teacher), and the change (model - base): how far the base's behaviour moved."""
    base, other, tokens = [sum(x) for x in nll_base], [sum(x) for x in nll_model], [len(x) for x in nll_base]
    return {
        "nll_base": estimate(_ratio, base, tokens, n_boot=n_boot),
        "nll": estimate(_ratio, other, tokens, n_boot=n_boot),
        "delta": estimate(_delta, other, base, tokens, n_boot=n_boot),
    }


def is_refusal(text: str) -> bool:
    return REFUSAL.search(text or "") is not None


def text_summary(texts: list[str], n_tokens: list[int], n_boot: int = 1000) -> dict:
    """Length (words, tokens) and refusal rate of a set of answers."""
    return {
        "words": mean_estimate([len(t.split()) for t in texts], n_boot),
        "tokens": mean_estimate(n_tokens, n_boot),
        "refusal": mean_estimate([float(is_refusal(t)) for t in texts], n_boot),
    }


def check_rates(constitution, answers: dict[str, list[str]], n_boot: int = 1000) -> dict:
    """{principle id: {"check": description, condition: rate estimate}} for principles with a check."""
    out = {}
    for p in constitution.principles:
        if p.check is None:
            continue
        out[p.id] = {
            "check": p.check.describe(),
            **{
                cond: mean_estimate([float(p.check.passes(t)) for t in texts], n_boot)
                for cond, texts in answers.items()
            },
        }
    return out


def every_check_rates(constitution, answers: dict[str, list[str]], labels: list[str], n_boot: int = 1000) -> dict:
    """Answers that pass every check of the constitution at once, per condition ("passed"), and each
    student's rate minus the teacher's on the same prompts ("vs_teacher", paired): how far a student
    goes beyond the prompted teacher, the preference stage's headline. {} where no principle has a check."""
    checks = [p.check for p in constitution.principles if p.check]
    if not checks:
        return {}
    passed = {cond: [float(all(c.passes(t) for c in checks)) for t in texts] for cond, texts in answers.items()}
    return {
        "passed": {cond: mean_estimate(v, n_boot) for cond, v in passed.items()},
        "vs_teacher": {lab: mean_estimate(np.subtract(passed[lab], passed["teacher"]), n_boot) for lab in labels},
    }


def vote_outcome(vote: dict) -> str:
    """A stored vote ("a"/"b"/"tie"/"both_bad", and which side A was) from the student's point of view."""
    if vote["choice"] in ("tie", "both_bad"):
        return vote["choice"]
    a_is_teacher = vote["a_is"] == "teacher"
    return "teacher" if (vote["choice"] == "a") == a_is_teacher else "student"


def vote_tally(votes: list[dict], n_boot: int = 1000) -> dict:
    """Counts and rates (with intervals) of student wins, teacher wins, ties and both-bad."""
    outcomes = [vote_outcome(v) for v in votes]
    tally = {"n": len(outcomes), "counts": {o: outcomes.count(o) for o in VOTE_OUTCOMES}}
    tally["rates"] = {o: mean_estimate([float(x == o) for x in outcomes], n_boot) for o in VOTE_OUTCOMES}
    # "as good as the teacher": student wins plus ties
    tally["rates"]["student_or_tie"] = mean_estimate([float(x in ("student", "tie")) for x in outcomes], n_boot)
    return tally


def blind_sides(eval_id: int, prompt_id: int, reviewer: str) -> bool:
    """True when the teacher is shown as A. Fixed per (eval, prompt, reviewer), so a reload shows the
    same order, and balanced over prompts."""
    return bool(np.random.default_rng([int(eval_id), int(prompt_id), sum(reviewer.encode())]).integers(2))


def rank_auc(scores, labels) -> float:
    """P(score of a positive > score of a negative), ties counting half: 0.5 = no better than chance."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())
