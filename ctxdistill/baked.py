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
from dataclasses import replace

import torch

from .constitution import render
from .safety import quote
from .sampling import response_logits
from .stats import share_estimate

MIN_INFLUENCE = 0.01  # share of the largest influence under which a principle has no measurable effect to carry


def shares(teacher: torch.Tensor, ablated: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Cov_T(δ, σ), Var_T(δ)) at each position from the three models' logits (..., V) -> (...), (...)."""
    log_t, log_a, log_s = (torch.log_softmax(x.float(), -1) for x in (teacher, ablated, student))
    p = log_t.exp()
    delta, sigma = log_t - log_a, log_s - log_a
    mean_d, mean_s = (p * delta).sum(-1), (p * sigma).sum(-1)
    return (p * delta * sigma).sum(-1) - mean_d * mean_s, (p * delta * delta).sum(-1) - mean_d**2


def ablations(constitution) -> list[tuple[str, str, str]]:
    """(name, the removed text, the system prompt without it) for the preamble and each principle."""
    items = []
    if constitution.preamble.strip():
        items.append(("(preamble)", constitution.preamble.strip(), render(replace(constitution, preamble=""))))
    for p in constitution.principles:
        rest = [q for q in constitution.principles if q is not p]
        items.append((p.id, p.text.strip(), render(replace(constitution, principles=rest))))
    return items


def tracked(spec: str, constitution, changed: list[str] = ()) -> list[str]:
    """The principles a run measures the score of while it trains (``TrainConfig.baked_gauge``):
    "auto" the ``changed`` ones (a re-bake's: rebake.changed_names; none for a fresh run), "all",
    "none", or comma-separated ids; ValueError naming the known ids for an unknown one."""
    known = [name for name, _, _ in ablations(constitution)]
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    if spec == "auto":
        return list(changed)
    if spec == "all":
        return known
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"baked gauge: no principle {quote(', '.join(unknown))} in this constitution "
            f"({len(unknown)} unknown; its principles: {', '.join(known)}; or auto, all, none)"
        )
    return names


class Gauge:
    """The score along a run's held-out answers, for a few principles, at each held-out measurement
    (the reference point T−i: the teacher without principle i; for a principle a re-bake changed,
    the teacher with that change undone, so that the score is the share of the *change* carried —
    the old student, which follows the old text, scores near 0, not the share of the principle's
    effect that both texts share):
    ``observe`` is handed the held-out KL's student and teacher states batch by batch
    (engine.heldout_kl), so the only extra forward is the teacher without each principle's, once
    per answer (kept), and ``values`` ends a measurement: {"baked:<principle>": raw score}."""

    def __init__(self, pair, systems: dict[str, str], chunk: int = 256):
        from .engine import TeacherStudent

        # the teacher without principle i, on the same model: its states along the held-out answers are
        # computed at the first measurement and kept (a few MB: H numbers per answer token)
        self.references = {
            name: TeacherStudent(pair.model, pair.tokenizer, system, pair.examples, teacher_cache_mb=1 << 12)
            for name, system in systems.items()
        }
        self.lm_head, self.chunk = pair.lm_head, chunk
        self.sums = torch.zeros(len(systems), 2, dtype=torch.float64)

    @torch.no_grad()
    def observe(self, batch, h_student: torch.Tensor, h_teacher: torch.Tensor) -> None:
        for row, reference in enumerate(self.references.values()):
            h_ablated = reference.teacher_hidden(batch)
            for i in range(0, len(h_student), self.chunk):
                part = slice(i, i + self.chunk)
                num, den = shares(*(self.lm_head(h[part]) for h in (h_teacher, h_ablated, h_student)))
                self.sums[row] += torch.tensor([float(num.sum()), float(den.sum())], dtype=torch.float64)

    def values(self, accelerator=None) -> dict[str, float]:
        sums, self.sums = self.sums, torch.zeros_like(self.sums)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
        return {
            f"baked:{name}": float(num / den) if den > 0 else math.nan
            for name, (num, den) in zip(self.references, sums.tolist())
        }


class Carried:
    """Per student and principle, the per-prompt sums of the score's numerator and denominator,
    filled by principle_influence as it computes the teacher with and without each principle."""

    def __init__(self, students: dict[str, str]):
        self.students = students  # {label: adapter name}
        self.terms: dict[str, dict[str, list[tuple[float, float]]]] = {label: {} for label in students}

    @torch.no_grad()
    def add(
        self,
        model,
        tokenizer,
        prompts: list[str],
        answers: list[list[int]],
        teacher: list[torch.Tensor],
        ablated: dict[str, list[torch.Tensor]],
    ) -> None:
        """One batch: each student's logits along the answers (no constitution), scored against the teacher's
        (``teacher``) and the teacher's without each principle (``ablated``, by principle name)."""
        for label, name in self.students.items():
            student = self.student_logits(model, tokenizer, name, prompts, answers)
            for principle, others in ablated.items():
                rows = self.terms[label].setdefault(principle, [])
                for t, o, s in zip(teacher, others, student):
                    num, den = shares(t, o, s)
                    rows.append((float(num.sum()), float(den.sum())))

    def student_logits(
        self, model, tokenizer, name: str, prompts: list[str], answers: list[list[int]]
    ) -> list[torch.Tensor]:
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
                rows.append(
                    {
                        "principle": r["principle"],
                        **share,
                        "influence": r["value"],
                        "checks": {"teacher": check["teacher"], "student": check[label]} if check else None,
                    }
                )
            out[label] = sorted(rows, key=lambda x: -x["value"] if math.isfinite(x["value"]) else math.inf)
        return out
