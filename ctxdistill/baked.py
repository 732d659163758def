"""Which principles got baked: for each principle, the share of its effect on the teacher that a
student reproduces without the constitution in its prompt.

Built on principle influence (evaluate.principle_influence): the teacher without principle i,
T−i, is a reference point along the teacher T's own answers. At each answer position let

    δ = log T − log T−i     (what principle i does to the next-token log-probabilities)
    σ = log S − log T−i     (where the student S stands, seen from the teacher without i)

both vectors over the vocabulary. The score is the regression coefficient of σ on δ under the
teacher's next-token distribution, summed over positions before the ratio:

    baked_i = Σ_t Cov_T(δ_t, σ_t) / Σ_t Var_T(δ_t)

Why this one:

* It reads as "share of the principle's effect the student reproduces": S = T gives σ = δ, so 1;
  S = T−i gives σ = 0, so 0; a student half-way along δ scores 0.5.
* It separates principles. A student that carries i but misses j stands at roughly T − δ_j, so
  σ = δ_i − δ_j: it scores about 1 on i when the two principles move different tokens (δ_i and
  δ_j nearly uncorrelated under T) and exactly 0 on j. A ratio of KLs such as
  1 − KL(T‖S) / KL(T‖T−i) cannot: everything the student misses of *other* principles adds to
  KL(T‖S) and counts against i (tests/test_baked.py: that ratio goes negative where this score is
  1). Principles compete for probability mass, so the mass a missing j would have taken can push
  the raw score on i a little above 1.
* The metric is the teacher's Fisher metric: for small effects Var_T(δ) ≈ 2 KL(T‖T−i), so the
  denominator is twice the principle influence the evaluation reports next to it, and the score
  is the share of that influence along which the student moved. Centring (Cov, Var rather than
  raw products) ignores a constant added to every log-probability, i.e. compares logits.
* Positions are summed before the ratio, as token-weighted KL is: tokens where the principle
  matters most count most. The interval is a percentile bootstrap over prompts
  (``stats.share_estimate``); the value is clipped to [0, 1] ("raw" keeps it unclipped: below 0
  the student moved against the principle, above 1 past it).
* A principle that hardly changes the teacher (influence under ``MIN_INFLUENCE`` of the most
  influential one's; relative, as KL scales differ between models) has no effect to carry: its
  score is not defined (NaN, listed last) rather than a ratio of noise.

It is first order: principles whose effects interact (move the same tokens) are not separated, and
like every KL score here it is measured along the teacher's own answers.
"""

from __future__ import annotations

import math

import torch

from .generate import response_logits
from .stats import share_estimate

MIN_INFLUENCE = 0.01   # share of the largest influence under which a principle has no measurable effect to carry


def shares(teacher: torch.Tensor, ablated: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Cov_T(δ, σ), Var_T(δ)) at each position from the three models' logits (..., V) -> (...), (...)."""
    log_t, log_a, log_s = (torch.log_softmax(x.float(), -1) for x in (teacher, ablated, student))
    p = log_t.exp()
    delta, sigma = log_t - log_a, log_s - log_a
    mean_d, mean_s = (p * delta).sum(-1), (p * sigma).sum(-1)
    return (p * delta * sigma).sum(-1) - mean_d * mean_s, (p * delta * delta).sum(-1) - mean_d ** 2


class Carried:
    """Per student and principle, the per-prompt sums of the score's numerator and denominator,
    filled by principle_influence as it computes the teacher with and without each principle."""

    def __init__(self, students: dict[str, str]):
        self.students = students                     # {label: adapter name}
        self.terms: dict[str, dict[str, list[tuple[float, float]]]] = {label: {} for label in students}

    @torch.no_grad()
    def add(self, model, tokenizer, prompts: list[str], answers: list[list[int]], teacher: list[torch.Tensor],
            ablated: dict[str, list[torch.Tensor]]) -> None:
        """One batch: each student's logits along the answers (no constitution), scored against the teacher's
        (``teacher``) and the teacher's without each principle (``ablated``, by principle name)."""
        for label, name in self.students.items():
            student = self.student_logits(model, tokenizer, name, prompts, answers)
            for principle, others in ablated.items():
                rows = self.terms[label].setdefault(principle, [])
                for t, o, s in zip(teacher, others, student):
                    num, den = shares(t, o, s)
                    rows.append((float(num.sum()), float(den.sum())))

    def student_logits(self, model, tokenizer, name: str, prompts: list[str], answers: list[list[int]]) -> list[torch.Tensor]:
        """Student ``name``'s logits along the answers: its adapter on, no constitution in the prompt."""
        model.set_adapter(name)
        return response_logits(model, tokenizer, [(None, p, a) for p, a in zip(prompts, answers)])

    def rows(self, influence: list[dict], checks: dict, n_boot: int = 1000) -> dict[str, list[dict]]:
        """{student label: one row per principle, most baked first}: the share (estimate with its interval, NaN
        for a principle without measurable influence), the principle's influence, and for a principle with an
        automatic check the teacher's and the student's pass rates."""
        out = {}
        floor = MIN_INFLUENCE * max((r["value"] for r in influence if math.isfinite(r["value"])), default=math.nan)
        for label, terms in self.terms.items():
            rows = []
            for r in influence:
                nums, dens = zip(*terms[r["principle"]])
                share = share_estimate(nums, dens, n_boot)
                if not r["value"] > floor:
                    share.update(value=math.nan, ci=[math.nan, math.nan])
                check = checks.get(r["principle"])
                rows.append({"principle": r["principle"], **share, "influence": r["value"],
                             "checks": {"teacher": check["teacher"], "student": check[label]} if check else None})
            out[label] = sorted(rows, key=lambda x: -x["value"] if math.isfinite(x["value"]) else math.inf)
        return out
