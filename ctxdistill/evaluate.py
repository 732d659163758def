"""Scoring the student: does the model without the constitution now answer as the teacher does, and
what did it cost?

    ctxdistill eval --constitution assets/constitutions/pirate.yaml --run 3 --json

For every held-out prompt, three kinds of answer are sampled once: the base model without the
constitution, the teacher (adapter off, constitution in context) and each student (adapter on, no
constitution). Every KL score is taken along the *teacher's* samples, so one set of teacher answers
serves the base and every student. One model sits in memory with each run's adapter loaded under
its own name: the teacher and the base are that model with the adapters disabled.

Scores (each with its sample size and a percentile-bootstrap 95% interval over prompts):

* KL(teacher‖base) and KL(teacher‖student), token-weighted, and KL gap closed = 1 - student/base;
* principle checks: pass rate per principle with an automatic check, for base, teacher, students;
* capability retention: NLL of the base's own answers under the student vs under the base;
* answer length and refusal rate;
* optionally a model-as-judge adherence per principle (off by default) and how often it agrees
  with the automatic checks;
* principle influence: KL between the teacher with the whole constitution and with one principle
  (or the preamble) removed, along the teacher's samples: which principles change behaviour.

The pure functions come first (tested on toy numbers), then the model passes, then the job.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .config import StageConfig
from .precision import PRECISIONS, QUANTIZE
from .generate import SamplingConfig, generate_rows, kl_per_token, response_logits
from .train import EVAL_FILE, Distiller, Example, ce_per_token, gap_closed

CONDITIONS = ("base", "teacher")           # then one "run N" per student
VOTE_OUTCOMES = ("student", "teacher", "tie", "both_bad")
REFUSAL = re.compile(
    r"\b(I\s*(can(no|')t|cannot|am\s+(not\s+able|unable)|'m\s+(not\s+able|unable)|won't|will\s+not)\s+"
    r"(help|assist|provide|do|answer|comply|fulfil|fulfill|support)|I'm sorry,? but|I am sorry,? but|"
    r"as an AI\b|I must (decline|refuse))", re.I)


class EvalError(RuntimeError):
    """An evaluation that cannot start; the message says what to change."""


# --------------------------------------------------------------------------- metrics (pure)

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


def retention(nll_base: list[list[float]], nll_model: list[list[float]], n_boot: int = 1000) -> dict:
    """NLL (nats/token) of the base model's own answers under the base and under another model (a
    student, or the teacher), and the change (model - base): how far the base's behaviour moved."""
    base, other, tokens = [sum(x) for x in nll_base], [sum(x) for x in nll_model], [len(x) for x in nll_base]
    return {"nll_base": estimate(_ratio, base, tokens, n_boot=n_boot),
            "nll": estimate(_ratio, other, tokens, n_boot=n_boot),
            "delta": estimate(_delta, other, base, tokens, n_boot=n_boot)}


def is_refusal(text: str) -> bool:
    return REFUSAL.search(text or "") is not None


def text_summary(texts: list[str], n_tokens: list[int], n_boot: int = 1000) -> dict:
    """Length (words, tokens) and refusal rate of a set of answers."""
    return {"words": mean_estimate([len(t.split()) for t in texts], n_boot),
            "tokens": mean_estimate(n_tokens, n_boot),
            "refusal": mean_estimate([float(is_refusal(t)) for t in texts], n_boot)}


def check_rates(constitution, answers: dict[str, list[str]], n_boot: int = 1000) -> dict:
    """{principle id: {"check": description, condition: rate estimate}} for principles with a check."""
    out = {}
    for p in constitution.principles:
        if p.check is None:
            continue
        out[p.id] = {"check": p.check.describe(),
                     **{cond: mean_estimate([float(p.check.passes(t)) for t in texts], n_boot) for cond, texts in answers.items()}}
    return out


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


# --------------------------------------------------------------------------- configuration

@dataclass
class EvalConfig(StageConfig):
    """One evaluation. Each field is also a ``ctxdistill eval`` flag."""
    error = EvalError
    what = "evaluation option"

    constitution_id: int = field(default=0, metadata={"help": "constitution version id (the CLI fills it from --constitution)"})
    runs: list = field(default_factory=list, metadata={"help": "training runs (job ids) to score as students"})
    prompt_set: str = field(default="default", metadata={"help": "prompt set whose held-out prompts are scored"})
    max_prompts: int = field(default=0, metadata={"help": "score at most this many held-out prompts (0 = all)"})
    sample_tokens: int = field(default=40, metadata={"help": "tokens per sampled answer"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (1 = the teacher's own distribution)"})
    seed: int = field(default=0, metadata={"help": "random seed; teacher, base and students share each prompt's stream"})
    batch_size: int = field(default=16, metadata={"help": "answers per scoring forward pass"})
    gen_batch: int = field(default=32, metadata={"help": "rows per sampling batch"})
    influence_prompts: int = field(default=8, metadata={"help": "prompts for principle influence (0 = skip it)"})
    retention_set: str = field(default="", metadata={"help": "prompt set whose held-out base answers measure retention (empty: the scored prompts)"})
    judge: bool = field(default=False, metadata={"help": "also ask a judge model whether each answer follows each principle"})
    judge_model: str = field(default="", metadata={"help": "judge model spec (empty: the evaluated base model)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples behind each interval"})
    quantize: str = field(default="auto", metadata={"help": "auto (what the first run trained with), 4bit or none"})
    precision: str = field(default="auto", metadata={"help": "compute dtype: auto (what the first run trained with), bf16, fp16 or fp32"})
    model: str = field(default="", metadata={"help": "model spec (empty: the workspace default)"})
    owner: str = field(default="", metadata={"help": "workspace owner"})

    def validate(self) -> "EvalConfig":
        errors = []
        self.runs = [int(r) for r in self.runs]
        if len(set(self.runs)) != len(self.runs):
            errors.append("a run is listed twice")
        for name in ("sample_tokens", "batch_size", "gen_batch", "n_boot"):
            if getattr(self, name) < 1:
                errors.append(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_prompts", "influence_prompts"):
            if getattr(self, name) < 0:
                errors.append(f"{name.replace('_', ' ')} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.temperature <= 5:
            errors.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if self.quantize not in QUANTIZE:
            errors.append(f"quantize must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if errors:
            raise EvalError("; ".join(errors))
        return self


@dataclass
class Plan:
    """Everything an evaluation needs, checked before the model is loaded."""

    constitution: object
    constitution_row: dict
    prompts: list[dict]
    retention_prompts: list[dict]
    runs: list[dict]       # {"run", "adapter" (path), "config", "info"}


def runs_adapter(store, run_id: int) -> Path:
    return store.runs_dir / str(run_id) / "adapter"


def plan(cfg: EvalConfig, store) -> Plan:
    """Check the constitution, the prompts and the runs; raise EvalError with what to fix."""
    from .constitution import from_dict
    from .sampling import ensure_default_prompts
    from .store import NotFound
    from .train import RUN_FILE

    cfg.validate()
    try:
        row = store.get_constitution(cfg.constitution_id)
    except NotFound:
        raise EvalError(f"no constitution version {cfg.constitution_id} in this workspace") from None
    ensure_default_prompts(store, owner=cfg.owner)

    def heldout(set_name: str) -> list[dict]:
        if not any(s["name"] == set_name for s in store.prompt_sets(owner=cfg.owner)):
            raise EvalError(f"there is no prompt set {set_name!r} (sets: "
                            f"{', '.join(s['name'] for s in store.prompt_sets(owner=cfg.owner)) or 'none'})")
        rows = store.get_prompts(set_name, split="heldout", owner=cfg.owner)
        if not rows:
            raise EvalError(f"prompt set {set_name!r} has no held-out prompts: the student must be scored on prompts "
                            "it never trained on. Re-import the set with a held-out fraction or a split column")
        return rows

    prompts = heldout(cfg.prompt_set)
    prompts = prompts[:cfg.max_prompts] if cfg.max_prompts else prompts
    retention_prompts = heldout(cfg.retention_set) if cfg.retention_set else prompts
    runs = []
    for run_id in cfg.runs:
        try:
            job = store.get_job(run_id)
        except NotFound:
            raise EvalError(f"there is no run {run_id} in this workspace") from None
        if job["kind"] != "train":
            raise EvalError(f"job {run_id} is a {job['kind']} job, not a training run")
        adapter = runs_adapter(store, run_id)
        if not (adapter / "adapter_model.safetensors").is_file():
            if job["state"] in ("queued", "running"):
                raise EvalError(f"run {run_id} has no adapter yet (it is {job['state']}); wait for it to finish")
            if job["state"] != "done":
                raise EvalError(f"run {run_id} ended {job['state']} without an adapter; resume it or train again")
            raise EvalError(f"the adapter of run {run_id} was deleted or is incomplete ({adapter}); train it again")
        model = job["config"].get("model") or ""
        if model != (cfg.model or ""):
            raise EvalError(f"run {run_id} was trained on another base model ({model or 'the default model'}), "
                            f"not {cfg.model or 'the default model'}: evaluate it with --model {model or 'embedded'}")
        try:
            info = json.loads((adapter / RUN_FILE).read_text()) if (adapter / RUN_FILE).is_file() else {}
        except (OSError, ValueError) as exc:
            raise EvalError(f"the adapter of run {run_id} is corrupt ({adapter / RUN_FILE}: {exc}); train it again") from None
        runs.append({"run": run_id, "adapter": adapter, "config": job["config"], "info": info})
    return Plan(from_dict(row["content"]), row, prompts, retention_prompts, runs)


def label(run_id: int) -> str:
    return f"run {run_id}"


# --------------------------------------------------------------------------- model passes

@dataclass
class Hooks:
    progress: object = lambda done, total, message: None
    should_stop: object = lambda: False


class Stopped(Exception):
    """The evaluation was asked to stop; nothing is stored."""


def load_students(cfg: EvalConfig, the_plan: Plan, models_dir):
    """(model, tokenizer, adapter name per run, the Precision it runs in): the base model with every run's adapter
    loaded under its own name; the teacher and the base are the same model with the adapters disabled."""
    from .models import ModelError, load_model
    from .train import AdapterError, check_adapter, load_adapter

    # a student is scored in the precision it was trained in, unless told otherwise
    first = the_plan.runs[0]["info"] if the_plan.runs else {}
    quantize = first.get("quantize", "auto") if cfg.quantize == "auto" else cfg.quantize
    precision = first.get("precision", "auto") if cfg.precision == "auto" else cfg.precision
    try:
        model, tokenizer = load_model(cfg.model or None, quantize=quantize, precision=precision, models_dir=models_dir)
    except ModelError as exc:
        raise EvalError(str(exc)) from exc
    names = []
    try:
        for i, run in enumerate(the_plan.runs):
            name = f"run{run['run']}"
            if i == 0:  # the first adapter turns the model into a PeftModel, named "default"
                model = load_adapter(model, run["adapter"])
                names.append("default")
            else:
                check_adapter(run["adapter"], model)
                model.load_adapter(str(run["adapter"]), adapter_name=name)
                names.append(name)
    except AdapterError as exc:
        raise EvalError(f"run {run['run']}: {exc}") from exc
    model.eval()
    return model, tokenizer, names, model.get_base_model().ctxdistill_precision if names else model.ctxdistill_precision


def _off(model):
    """The teacher's and the base model's weights: every adapter disabled."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _with_end(tokenizer, answers: list[list[int]], max_tokens: int) -> list[list[int]]:
    """An answer that stopped by itself ends with the end-of-turn token, so the stop decision is scored
    too (as in training's held-out KL)."""
    end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    return [a + ([end] if len(a) < max_tokens and end is not None else []) for a in answers]


def _per_row(values: torch.Tensor, lengths: list[int]) -> list[list[float]]:
    return [part.tolist() for part in torch.split(values.float().cpu(), lengths)]


def _positions(lm_head, fn, a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """fn(lm_head(a), b or lm_head(b)) over N answer positions, ``chunk`` full-vocabulary rows at a time."""
    out = [fn(lm_head(a[i:i + chunk]), b[i:i + chunk] if b.dtype == torch.long else lm_head(b[i:i + chunk]))
           for i in range(0, a.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def sample_answers(model, tokenizer, rows: list[tuple[str | None, str, int]], cfg: EvalConfig, examples=(), tick=None) -> list[list[int]]:
    """Answers for (system, prompt, prompt index) rows in batches; the prompt index seeds the row's random
    stream, so teacher, base and students draw the same random numbers for the same prompt."""
    sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=cfg.temperature, seed=cfg.seed)
    out = []
    for part in _chunks(len(rows), cfg.gen_batch):
        chunk = rows[part]
        out += generate_rows(model, tokenizer, [(s, p) for s, p, _ in chunk], sampling,
                             sample_index=[i for _, _, i in chunk], examples=examples)
        if tick:
            tick(len(chunk))
    return out


@torch.no_grad()
def score_along(model, tokenizer, system: str, examples, prompts: list[str], answers: list[list[int]],
                students: list[str], batch_size: int, kind: str = "kl", tick=None) -> dict[str, list[list[float]]]:
    """Per-token scores along ``answers`` for "base", "teacher" and each student adapter.

    kind "kl": KL(teacher‖x) for x in base and the students (the answers are the teacher's).
    kind "nll": the negative log-likelihood of the answers under base, teacher and students."""
    distiller = Distiller(model, tokenizer, system, examples)
    head = distiller.lm_head
    names = ["base"] + students + (["teacher"] if kind == "nll" else [])
    out: dict[str, list[list[float]]] = {n: [[] for _ in prompts] for n in names}
    rows = [i for i, a in enumerate(answers) if a]
    for part in _chunks(len(rows), batch_size):
        idx = rows[part]
        batch = [Example(prompts[i], answers[i]) for i in idx]
        lengths = [len(answers[i]) for i in idx]
        with _off(model):
            h_base, h_teacher, targets = distiller.hidden(batch, with_teacher=True)
        hidden = {"base": h_base}
        for name in students:
            model.set_adapter(name)
            hidden[name] = distiller.hidden(batch, with_teacher=False)[0]
        if kind == "kl":
            values = {n: _positions(head, kl_per_token, h_teacher, h) for n, h in hidden.items()}
        else:
            hidden["teacher"] = h_teacher
            values = {n: _positions(head, ce_per_token, h, targets) for n, h in hidden.items()}
        for name, v in values.items():
            for i, row in zip(idx, _per_row(v, lengths)):
                out[name][i] = row
        if tick:
            tick(len(idx))
    return out


def ablations(constitution) -> list[tuple[str, str, str]]:
    """(name, the removed text, the system prompt without it) for the preamble and each principle."""
    from .constitution import render

    items = []
    if constitution.preamble.strip():
        items.append(("(preamble)", constitution.preamble.strip(), render(replace(constitution, preamble=""))))
    for p in constitution.principles:
        rest = [q for q in constitution.principles if q is not p]
        items.append((p.id, p.text.strip(), render(replace(constitution, principles=rest))))
    return items


@torch.no_grad()
def principle_influence(model, tokenizer, constitution, prompts: list[str], answers: list[list[int]],
                        batch_size: int = 4, n_boot: int = 1000, tick=None) -> list[dict]:
    """For each principle (and the preamble): KL(teacher with everything ‖ teacher without it) along the
    teacher's answers, largest first. A principle near zero changes nothing the model does."""
    from .constitution import render

    full = render(constitution)
    items = ablations(constitution)
    kls: dict[str, list[list[float]]] = {name: [] for name, _, _ in items}
    pairs = [(p, a) for p, a in zip(prompts, answers) if a]
    with _off(model):
        for part in _chunks(len(pairs), batch_size):
            chunk = pairs[part]
            teacher = response_logits(model, tokenizer, [(full, p, a) for p, a in chunk], constitution.examples)
            for name, _, system in items:
                other = response_logits(model, tokenizer, [(system, p, a) for p, a in chunk], constitution.examples)
                kls[name] += [kl_per_token(t, o).cpu().tolist() for t, o in zip(teacher, other)]
            if tick:
                tick(len(chunk))
    rows = [{"principle": name, "text": text, **token_kl(kls[name], n_boot)} for name, text, _ in items]
    return sorted(rows, key=lambda r: -r["value"] if math.isfinite(r["value"]) else math.inf)


def influence(model, tokenizer, constitution, prompts: list[str], sample_tokens: int = 40, seed: int = 0,
              temperature: float = 1.0, n_boot: int = 1000) -> list[dict]:
    """Principle influence on fresh teacher samples of ``prompts`` (the Constitution tab's check)."""
    from .constitution import render

    cfg = EvalConfig(sample_tokens=sample_tokens, temperature=temperature, seed=seed)
    with _off(model):
        answers = sample_answers(model, tokenizer, [(render(constitution), p, i) for i, p in enumerate(prompts)],
                                 cfg, constitution.examples)
    return principle_influence(model, tokenizer, constitution, prompts, _with_end(tokenizer, answers, sample_tokens),
                               n_boot=n_boot)


JUDGE_PROMPT = ("Rule: {rule}\n\nQuestion: {prompt}\n\nAnswer: {answer}\n\n"
                "Does the answer follow the rule? Reply with Yes or No.")


@torch.no_grad()
def judge(model, tokenizer, rules: list[str], prompts: list[str], answers: list[str], batch_size: int = 16) -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) of the judge's first answer token, for each (rule, prompt, answer)."""
    yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = tokenizer.encode("No", add_special_tokens=False)[0]
    distiller = Distiller(model, tokenizer, "")
    out = []
    for part in _chunks(len(rules), batch_size):
        batch = [Example(JUDGE_PROMPT.format(rule=r, prompt=p, answer=a), [yes])
                 for r, p, a in zip(rules[part], prompts[part], answers[part])]
        h = distiller.hidden(batch, with_teacher=False)[0]
        out += torch.softmax(distiller.lm_head(h)[:, [yes, no]].float(), -1)[:, 0].tolist()
    return out


def rank_auc(scores, labels) -> float:
    """P(score of a positive > score of a negative), ties counting half: 0.5 = no better than chance."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def judge_report(constitution, answers: dict[str, list[str]], prompts: list[str], scores: dict, n_boot: int) -> dict:
    """Adherence per principle and condition, and how well the judge matches the automatic checks:
    agreement of its yes/no with them (against the base rate of always giving the commoner verdict)
    and the rank AUC of its P(yes) between passing and failing answers."""
    adherence = {p.id: {cond: mean_estimate(scores[cond][p.id], n_boot) for cond in answers} for p in constitution.principles}
    pairs = [(y, p.check.passes(t)) for p in constitution.principles if p.check
             for cond, texts in answers.items() for y, t in zip(scores[cond][p.id], texts)]
    passed = [float(ok) for _, ok in pairs]
    return {"adherence": adherence,
            "agreement_with_checks": mean_estimate([float((y > 0.5) == ok) for y, ok in pairs], n_boot),
            "majority_baseline": max(np.mean(passed), 1 - np.mean(passed)) if pairs else math.nan,
            "auc_vs_checks": rank_auc([y for y, _ in pairs], [ok for _, ok in pairs]),
            "yes_rate": float(np.mean([y > 0.5 for y, _ in pairs])) if pairs else math.nan}


# --------------------------------------------------------------------------- the evaluation

def training_curves(store, run_id: int) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of a training run (loss, kl, heldout_kl)."""
    curves: dict[str, list] = {}
    for m in store.get_metrics(run_id):
        if m["name"] in ("loss", "kl", "heldout_kl") and m["value"] is not None:
            curves.setdefault(m["name"], []).append([m["step"], m["value"]])
    return curves


def run(cfg: EvalConfig, store, hooks: Hooks = Hooks(), models_dir=None) -> dict:
    """Sample, score and summarise; returns the results (every number) without storing anything."""
    from .constitution import content_hash, render
    from .models import default_models_dir

    the_plan = plan(cfg, store)
    c, prompts = the_plan.constitution, the_plan.prompts
    texts = [p["text"] for p in prompts]
    n, runs = len(prompts), the_plan.runs
    shared_retention = the_plan.retention_prompts is prompts
    retention_texts = [p["text"] for p in the_plan.retention_prompts]
    n_influence = min(cfg.influence_prompts, n)
    # progress units: sampled answers, then scored answers (KL, then retention), then influence prompts
    total = n * (2 + len(runs)) + n + len(retention_texts) * (1 if shared_retention else 2) + n_influence
    done = [0]
    timing: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()

    def tick(k: int, message: str):
        if hooks.should_stop():
            raise Stopped("stopped by request")
        done[0] += k
        hooks.progress(done[0], total, message)

    hooks.progress(0, total, "loading the model and the adapters")
    model, tok, names, chosen = load_students(cfg, the_plan, models_dir or default_models_dir(store.home))
    timing["load_s"] = time.perf_counter() - started
    system = render(c)
    labels = [label(r["run"]) for r in runs]

    t0 = time.perf_counter()
    with _off(model):
        both = sample_answers(model, tok, [(system, p, i) for i, p in enumerate(texts)] + [(None, p, i) for i, p in enumerate(texts)],
                              cfg, c.examples, lambda k: tick(k, "sampling the teacher's and the base model's answers"))
    ids = {"teacher": both[:n], "base": both[n:]}
    for name, lab in zip(names, labels):
        model.set_adapter(name)
        ids[lab] = sample_answers(model, tok, [(None, p, i) for i, p in enumerate(texts)], cfg,
                                  tick=lambda k, lab=lab: tick(k, f"sampling the answers of {lab}"))
    timing["sample_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    teacher_ids = _with_end(tok, ids["teacher"], cfg.sample_tokens)
    kl = score_along(model, tok, system, c.examples, texts, teacher_ids, names, cfg.batch_size, "kl",
                     lambda k: tick(k, "scoring KL(teacher‖x) along the teacher's answers"))
    if shared_retention:
        base_ids = _with_end(tok, ids["base"], cfg.sample_tokens)
    else:
        with _off(model):
            base_ids = _with_end(tok, sample_answers(model, tok, [(None, p, i) for i, p in enumerate(retention_texts)], cfg,
                                                      tick=lambda k: tick(k, "sampling the base's reference answers")),
                                 cfg.sample_tokens)
    nll = score_along(model, tok, system, c.examples, retention_texts, base_ids, names, cfg.batch_size, "nll",
                      lambda k: tick(k, "scoring retention (NLL of the base's own answers)"))
    timing["score_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    influence_rows = principle_influence(model, tok, c, texts[:n_influence], teacher_ids[:n_influence], n_boot=cfg.n_boot,
                                         tick=lambda k: tick(k, "measuring principle influence")) if n_influence else []
    timing["influence_s"] = time.perf_counter() - t0

    conditions = ["base", "teacher", *labels]
    answers = {cond: [tok.decode(a, skip_special_tokens=True) for a in ids[cond]] for cond in conditions}
    kl = {("base" if name == "base" else labels[names.index(name)]): v for name, v in kl.items()}
    nll = {("base" if name == "base" else "teacher" if name == "teacher" else labels[names.index(name)]): v
           for name, v in nll.items()}

    judge_result = None
    if cfg.judge:
        t0 = time.perf_counter()
        hooks.progress(done[0], total, "asking the judge model")
        judge_result = run_judge(cfg, c, texts, answers, model, tok, models_dir or default_models_dir(store.home))
        timing["judge_s"] = time.perf_counter() - t0

    b = cfg.n_boot
    scores = {
        "kl": {cond: token_kl(kl[cond], b) for cond in ["base", *labels]},
        "gap_closed": {lab: gap_closed_estimate(kl[lab], kl["base"], b) for lab in labels},
        "retention": {cond: retention(nll["base"], nll[cond], b) for cond in ["teacher", *labels]},
        "checks": check_rates(c, answers, b),
        "length": {cond: text_summary(answers[cond], [len(a) for a in ids[cond]], b) for cond in conditions},
    }
    timing["total_s"] = time.perf_counter() - started
    timing["cpu_s"] = time.process_time() - cpu_started  # all threads: on a busy machine, the work itself
    return {
        "constitution": {"id": the_plan.constitution_row["id"], "name": c.name, "hash": content_hash(c),
                         "system_prompt": system},
        "prompt_set": cfg.prompt_set, "retention_set": cfg.retention_set or cfg.prompt_set, "n_prompts": n,
        "model": cfg.model or "embedded SmolLM2-135M-Instruct", "quantize": chosen.quantize,
        "precision": chosen.compute, "settings": cfg.to_dict(),
        "runs": [{"run": r["run"], "label": lab, "constitution_id": r["config"].get("constitution_id"),
                  "loss": r["config"].get("loss"), "data": r["config"].get("data"), "steps": r["config"].get("steps"),
                  "trained_on_this_constitution": r["config"].get("constitution_id") == cfg.constitution_id,
                  "training": training_curves(store, r["run"])} for r, lab in zip(runs, labels)],
        "conditions": conditions,
        "scores": scores,
        "prompts": [{"id": p["id"], "text": p["text"], "category": p.get("category", ""),
                     "answers": {cond: answers[cond][i] for cond in conditions},
                     "tokens": [tok.decode([t]) for t in teacher_ids[i]],
                     "kl": {cond: kl[cond][i] for cond in kl}} for i, p in enumerate(prompts)],
        "influence": influence_rows,
        "judge": judge_result,
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }


def run_judge(cfg: EvalConfig, constitution, prompts: list[str], answers: dict[str, list[str]], model, tokenizer, models_dir) -> dict:
    """Judge every answer against every principle; the judge is the evaluated base model unless configured."""
    from .models import ModelError, load_model

    if cfg.judge_model:
        try:
            model, tokenizer = load_model(cfg.judge_model, models_dir=models_dir)
        except ModelError as exc:
            raise EvalError(f"judge model: {exc}") from exc
    scores = {}
    with _off(model):
        for cond, texts in answers.items():
            scores[cond] = {}
            for p in constitution.principles:
                scores[cond][p.id] = judge(model, tokenizer, [p.text] * len(texts), prompts, texts, cfg.batch_size)
    return {"model": cfg.judge_model or "the evaluated base model",
            **judge_report(constitution, answers, prompts, scores, cfg.n_boot), "scores": scores}


def headline(results: dict, run_label: str | None = None) -> dict:
    """The figures the CLI prints for one student (the first run unless named)."""
    scores = results["scores"]
    lab = run_label or (results["runs"][0]["label"] if results["runs"] else None)
    value = lambda est: est["value"] if est else None
    out = {"kl_base": value(scores["kl"]["base"]), "kl_student": value(scores["kl"].get(lab)),
           "gap_closed": value(scores["gap_closed"].get(lab)), "n_prompts": results["n_prompts"], "run": lab,
           "checks": {pid: {cond: value(row.get(cond)) for cond in ("base", "teacher", lab) if cond in row}
                      for pid, row in scores["checks"].items()}}
    ret = scores["retention"].get(lab)
    out["retention"] = ({"nll_base": value(ret["nll_base"]), "nll_student": value(ret["nll"]), "delta": value(ret["delta"])}
                        if ret else {})
    out["intervals"] = {"kl_base": scores["kl"]["base"]["ci"],
                        **({"kl_student": scores["kl"][lab]["ci"], "gap_closed": scores["gap_closed"][lab]["ci"]} if lab else {})}
    out["seconds"] = results["timing"]["total_s"]
    return out


def card_section(results: dict, run_label: str, eval_id: int) -> str:
    """The evaluation figures of one run, as a Markdown section of its model card."""
    s = results["scores"]
    rows = [("KL(teacher‖base), nats/token", _fmt(s["kl"]["base"])), ("KL(teacher‖student), nats/token", _fmt(s["kl"][run_label])),
            ("KL gap closed", _fmt(s["gap_closed"][run_label], pct=True)),
            ("retention: Δ NLL of the base's answers", _fmt(s["retention"][run_label]["delta"]))]
    rows += [(f"check {pid} ({row['check']}): base / teacher / student",
              " / ".join(_fmt(row[c], pct=True) for c in ("base", "teacher", run_label))) for pid, row in s["checks"].items()]
    c = results["constitution"]
    return "\n".join([f"## Evaluation (ctxdistill eval {eval_id})", "",
                      f"On {results['n_prompts']} held-out prompts of set {results['prompt_set']!r}, constitution "
                      f"{c['name']} version {c['id']}; 95% bootstrap intervals in brackets.", "",
                      _table_md([{"figure": a, "value": b} for a, b in rows])])


def evaluate_job(ctx, config: dict) -> None:
    """The "evaluate" job kind: score, then store the whole result as one eval row (nothing half)."""
    from .jobs import Cancelled

    cfg = EvalConfig.from_dict(config)
    hooks = Hooks(progress=ctx.progress, should_stop=ctx.should_stop)
    try:
        results = run(cfg, ctx.store, hooks)
    except Stopped as exc:
        raise Cancelled(str(exc)) from exc
    (ctx.run_dir / "eval.json").write_text(json.dumps(results, indent=1))
    eval_id = ctx.store.save_eval(ctx.job_id, cfg.constitution_id, cfg.runs, results, owner=cfg.owner)
    ctx.log.info("eval %s stored in %.0f s", eval_id, results["timing"]["total_s"])
    for r in results["runs"]:  # the model card of an exported adapter shows its latest evaluation
        card = {"eval_id": eval_id, "markdown": card_section(results, r["label"], eval_id)}
        (runs_adapter(ctx.store, r["run"]) / EVAL_FILE).write_text(json.dumps(card, indent=1))
    ctx.set_result({"eval_id": eval_id, **headline(results)})


# --------------------------------------------------------------------------- plots and reports

def _figure(ncols: int = 1, figsize=(6, 3.4)):
    """A matplotlib figure outside pyplot's registry (nothing to close; no GUI backend needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _bars(ax, names: list[str], ests: list[dict], title: str, color=None):
    values = [e["value"] for e in ests]
    err = np.array([[max(0.0, e["value"] - e["ci"][0]) if math.isfinite(e["ci"][0]) else 0.0 for e in ests],
                    [max(0.0, e["ci"][1] - e["value"]) if math.isfinite(e["ci"][1]) else 0.0 for e in ests]])
    ax.bar(names, values, yerr=err, capsize=4, color=color)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def fig_scores(results: dict, labels: list[str] | None = None):
    """Metric bars with 95% intervals: KL to the teacher, gap closed, retention, check pass rates."""
    s = results["scores"]
    labels = labels or [r["label"] for r in results["runs"]]
    checks = s["checks"]
    fig, axes = _figure(3 + bool(checks), figsize=(4 * (3 + bool(checks)), 3.4))
    _bars(axes[0], ["base", *labels], [s["kl"][c] for c in ["base", *labels]], "KL(teacher‖x), nats/token")
    _bars(axes[1], labels, [s["gap_closed"][c] for c in labels], "KL gap closed", "tab:green")
    _bars(axes[2], ["teacher", *labels], [s["retention"][c]["delta"] for c in ["teacher", *labels]],
          "Δ NLL of base answers (retention)", "tab:orange")
    if checks:
        conds = ["base", "teacher", *labels]
        width = 0.8 / len(conds)
        for k, cond in enumerate(conds):
            ests = [row[cond] for row in checks.values()]
            x = np.arange(len(checks)) + k * width
            axes[3].bar(x, [e["value"] for e in ests], width, label=cond,
                        yerr=np.array([[e["value"] - e["ci"][0] for e in ests], [e["ci"][1] - e["value"] for e in ests]]),
                        capsize=2)
        axes[3].set_xticks(np.arange(len(checks)) + 0.4 - width / 2, list(checks), fontsize=8)
        axes[3].set_ylim(0, 1.05)
        axes[3].set_title("check pass rate", fontsize=10)
        axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_prompt_kl(results: dict, cond: str) -> list[float]:
    return [sum(p["kl"][cond]) / len(p["kl"][cond]) if p["kl"].get(cond) else math.nan for p in results["prompts"]]


def fig_kl_distribution(results: dict, labels: list[str] | None = None):
    """Histogram of the per-prompt mean KL(teacher‖x) for the base model and the students."""
    labels = labels or [r["label"] for r in results["runs"]]
    fig, ax = _figure()
    values = {c: [v for v in per_prompt_kl(results, c) if math.isfinite(v)] for c in ["base", *labels]}
    top = max((max(v) for v in values.values() if v), default=1.0)
    bins = np.linspace(0, top or 1.0, 21)
    for cond, v in values.items():
        ax.hist(v, bins=bins, alpha=0.55, label=cond)
    ax.set_xlabel("mean KL(teacher‖x) per prompt, nats/token")
    ax.set_ylabel("prompts")
    ax.set_title(f"Held-out KL distribution ({results['n_prompts']} prompts)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_training(results: dict, labels: list[str] | None = None):
    """Training loss and held-out KL of the compared runs, by step."""
    fig, axes = _figure(2, figsize=(9, 3.2))
    for r in results["runs"]:
        if labels and r["label"] not in labels:
            continue
        for ax, name in zip(axes, ("loss", "heldout_kl")):
            points = r["training"].get(name) or []
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if name == "heldout_kl" else None,
                        label=r["label"])
    for ax, title in zip(axes, ("training loss", "held-out KL(teacher‖student)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_influence(rows: list[dict]):
    """Principles sorted by how much removing them changes the teacher (KL, 95% interval)."""
    fig, ax = _figure(figsize=(6, 0.5 + 0.45 * max(1, len(rows))))
    rows = list(reversed(rows))
    values = [r["value"] for r in rows]
    err = np.array([[r["value"] - r["ci"][0] for r in rows], [r["ci"][1] - r["value"] for r in rows]]) if rows else None
    ax.barh([r["principle"] for r in rows], values, xerr=err, capsize=3, color="tab:purple")
    ax.set_xlabel("KL(full constitution ‖ without it), nats/token")
    ax.set_title("Principle influence", fontsize=10)
    fig.tight_layout()
    return fig


def fig_votes(tally: dict):
    fig, ax = _figure(figsize=(5, 3))
    _bars(ax, list(VOTE_OUTCOMES), [tally["rates"][o] for o in VOTE_OUTCOMES], f"Blind A/B ({tally['n']} votes)", "tab:gray")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    return fig


def png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(est: dict | None, pct: bool = False) -> str:
    if not est or not math.isfinite(est.get("value", math.nan)):
        return "–"
    f = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:.4f}")
    lo, hi = est["ci"]
    ci = f" [{f(lo)}, {f(hi)}]" if math.isfinite(lo) else ""
    return f"{f(est['value'])}{ci}"


def scoreboard(results: dict) -> list[dict]:
    """One row per condition: the headline figures with 95% intervals, as text."""
    s = results["scores"]
    rows = []
    for cond in results["conditions"]:
        checks = [row[cond]["value"] for row in s["checks"].values()]
        rows.append({
            "model": cond,
            "n": results["n_prompts"],
            "KL(teacher‖x)": "0 (reference)" if cond == "teacher" else _fmt(s["kl"].get(cond)),
            "gap closed": _fmt(s["gap_closed"].get(cond), pct=True) if cond not in CONDITIONS else ("0%" if cond == "base" else "100%"),
            "Δ NLL (retention)": _fmt(s["retention"][cond]["delta"]) if cond in s["retention"] else "0 (reference)",
            "checks passed": f"{np.mean(checks):.0%}" if checks else "–",
            "words": _fmt(s["length"][cond]["words"]).split(" [")[0],
            "refusals": _fmt(s["length"][cond]["refusal"], pct=True),
        })
    return rows


def _table_md(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in head) + " |" for r in rows])


def report_sections(results: dict, tally: dict | None = None) -> list[tuple[str, str, object]]:
    """(heading, Markdown text, figure or None) in report order."""
    s = results["scores"]
    c = results["constitution"]
    runs = ", ".join(f"{r['label']} ({r['loss']}, {r['steps']} steps, constitution v{r['constitution_id']})"
                     for r in results["runs"]) or "none"
    settings = results["settings"]
    intro = (f"Constitution **{c['name']}** version {c['id']} (sha256 {c['hash'][:12]}); model {results['model']} "
             f"({results['quantize']}); {results['n_prompts']} held-out prompts of set **{results['prompt_set']}**; "
             f"runs: {runs}. Answers of {settings['sample_tokens']} tokens at temperature {settings['temperature']}, "
             f"seed {settings['seed']}; 95% intervals from {settings['n_boot']} bootstrap resamples of the prompts; "
             f"evaluated in {results['timing']['total_s']:.0f} s.")
    sections = [("Setup", intro, None), ("Scoreboard", _table_md(scoreboard(results)), fig_scores(results))]
    if s["checks"]:
        rows = [{"principle": pid, "check": row["check"], **{cond: _fmt(row[cond], pct=True) for cond in results["conditions"]}}
                for pid, row in s["checks"].items()]
        sections.append(("Principle checks", _table_md(rows), None))
    sections.append(("KL distribution", "Per-prompt mean KL(teacher‖x) along the teacher's answers.",
                     fig_kl_distribution(results)))
    if any(r["training"] for r in results["runs"]):
        sections.append(("Training curves", "", fig_training(results)))
    if results.get("influence"):
        rows = [{"principle": r["principle"], "KL without it": _fmt(r), "text": r["text"]} for r in results["influence"]]
        sections.append(("Principle influence", "KL between the teacher with the whole constitution and with one "
                         "principle removed, along the teacher's answers; near zero = dead weight.\n\n" + _table_md(rows),
                         fig_influence(results["influence"])))
    if results.get("judge"):
        j = results["judge"]
        rows = [{"principle": pid, **{cond: _fmt(est, pct=True) for cond, est in row.items()}} for pid, row in j["adherence"].items()]
        sections.append(("Model-as-judge", f"Judge: {j['model']}. Agreement with the automatic checks: "
                         f"{_fmt(j['agreement_with_checks'], pct=True)} (n={j['agreement_with_checks']['n']}; always giving "
                         f"the commoner verdict: {j['majority_baseline']:.0%}); rank AUC of P(yes) between passing and "
                         f"failing answers {j['auc_vs_checks']:.2f} (0.5 = chance).\n\n" + _table_md(rows), None))
    if tally and tally["n"]:
        rows = [{"outcome": o, "count": tally["counts"][o], "rate": _fmt(tally["rates"][o], pct=True)} for o in VOTE_OUTCOMES]
        sections.append(("Blind A/B review", _table_md(rows), fig_votes(tally)))
    else:
        sections.append(("Blind A/B review", "No votes yet.", None))
    return sections


def report(results: dict, fmt: str = "md", tally: dict | None = None) -> str:
    """A self-contained report: Markdown or HTML with the plots inline (base64 PNG), or JSON with every number."""
    if fmt == "json":
        return json.dumps({**results, "votes": tally}, indent=1, ensure_ascii=False)
    title = f"Evaluation of {results['constitution']['name']} v{results['constitution']['id']}"
    sections = report_sections(results, tally)
    if fmt == "md":
        parts = [f"# {title}"]
        for heading, text, fig in sections:
            parts += [f"## {heading}", text] + ([f"![{heading}](data:image/png;base64,{png_base64(fig)})"] if fig else [])
        return "\n\n".join(p for p in parts if p) + "\n"
    if fmt == "html":
        import markdown_it  # gradio depends on it

        md = markdown_it.MarkdownIt("commonmark", {"html": False}).enable("table")  # user text stays text
        body = [f"<h1>{html.escape(title)}</h1>"]
        for heading, text, fig in sections:
            body += [f"<h2>{html.escape(heading)}</h2>", md.render(text)]
            if fig:
                body.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{png_base64(fig)}'>")
        style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
        return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    raise EvalError(f"report format must be md, html or json, not {fmt!r}")


def write_report(results: dict, path, tally: dict | None = None) -> Path:
    """Write the report in the format its suffix names (.md, .html or .json)."""
    path = Path(path)
    fmt = {".md": "md", ".html": "html", ".json": "json"}.get(path.suffix)
    if fmt is None:
        raise EvalError(f"report file must end in .md, .html or .json: {path}")
    path.write_text(report(results, fmt, tally), encoding="utf-8")
    return path


def eval_tally(store, eval_id: int, n_boot: int = 1000) -> dict:
    return vote_tally(store.list_votes(eval_id), n_boot)
