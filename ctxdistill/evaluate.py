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
  (or the preamble) removed, along the teacher's samples: which principles change behaviour;
* which principles got baked: per principle and student, the share of its effect the student
  reproduces, from the same teacher passes (baked.py defines and justifies the score).
* the robustness suite (robustness.py, on unless --no-robustness): capability on a set of short
  verifiable questions, scores by prompt family, a second turn, injection attempts, a placebo
  system prompt and the savings of dropping the constitution.

What an evaluation is asked and the plan checked before a model loads are in eval_config.py, the
statistics in stats.py (tested on toy numbers), the results' layout, headline and model card
section in summary.py and the report in report.py; here are the model passes and the job.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import robustness
from .adapters import EVAL_FILE, run_adapter
from .baked import Carried, ablations
from .engine import Example, TeacherStudent, adapters_off, sample_rows, with_end
from .eval_config import EvalConfig, EvalError, Plan, label, plan
from .jobs import Meter, eta_text
from .losses import answer_terms, kl_per_token
from .sampling import SamplingConfig, response_logits
from .stats import (
    check_rates,
    every_check_rates,
    gap_closed_estimate,
    mean_estimate,
    rank_auc,
    retention,
    text_summary,
    token_kl,
)
from .summary import card_section, headline, layout


@dataclass
class Hooks:
    progress: object = lambda done, total, message: None
    should_stop: object = lambda: False


class Stopped(Exception):
    """The evaluation was asked to stop; nothing is stored."""


# --------------------------------------------------------------------------- model passes


def load_students(cfg: EvalConfig, the_plan: Plan, models_dir):
    """(model, tokenizer, adapter name per run, the Precision it runs in): the base model with every run's adapter
    loaded under its own name; the teacher and the base are the same model with the adapters disabled."""
    from .adapters import AdapterError, check_adapter, load_adapter
    from .models import ModelError, load_model

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


@torch.no_grad()
def score_along(
    model,
    tokenizer,
    system: str,
    examples,
    prompts: list[str],
    answers: list[list[int]],
    students: dict[str, str],
    batch_size: int,
    kind: str = "kl",
    tick=None,
) -> dict[str, list[list[float]]]:
    """Per-token scores along ``answers`` for "base", "teacher" and each student (label: adapter name).

    kind "kl": KL(teacher‖x) for x in base and the students (the answers are the teacher's).
    kind "nll": the negative log-likelihood of the answers under base, teacher and students."""
    pair = TeacherStudent(model, tokenizer, system, examples)
    names = ["base", *students] + (["teacher"] if kind == "nll" else [])
    out: dict[str, list[list[float]]] = {n: [[] for _ in prompts] for n in names}
    rows = [i for i, a in enumerate(answers) if a]
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        batch = [Example(prompts[i], answers[i]) for i in idx]
        lengths = [len(answers[i]) for i in idx]
        with adapters_off(model):
            h_base, h_teacher, targets = pair.hidden(batch, with_teacher=True)
        hidden = {"base": h_base}
        for lab, name in students.items():
            model.set_adapter(name)
            hidden[lab] = pair.hidden(batch, with_teacher=False)[0]
        if kind == "kl":
            values = {n: answer_terms(pair.lm_head, "kl", h, h_teacher, None, lengths)["kl"] for n, h in hidden.items()}
        else:
            hidden["teacher"] = h_teacher
            values = {n: answer_terms(pair.lm_head, "sft", h, None, targets, lengths)["ce"] for n, h in hidden.items()}
        for name, per_answer in values.items():
            for i, row in zip(idx, per_answer):
                out[name][i] = row
        if tick:
            tick(len(idx))
    return out


@torch.no_grad()
def principle_influence(
    model,
    tokenizer,
    constitution,
    prompts: list[str],
    answers: list[list[int]],
    batch_size: int = 4,
    n_boot: int = 1000,
    tick=None,
    carried: Carried | None = None,
) -> list[dict]:
    """For each principle (and the preamble): KL(teacher with everything ‖ teacher without it) along the
    teacher's answers, largest first. A principle near zero changes nothing the model does. With ``carried``,
    the same teacher passes also score how much of each principle the students carry (baked.py)."""
    from .constitution import render

    full = render(constitution)
    items = ablations(constitution)
    kls: dict[str, list[list[float]]] = {name: [] for name, _, _ in items}
    pairs = [(p, a) for p, a in zip(prompts, answers) if a]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        with adapters_off(model):
            teacher = response_logits(model, tokenizer, [(full, p, a) for p, a in chunk], constitution.examples)
            ablated = {
                name: response_logits(model, tokenizer, [(system, p, a) for p, a in chunk], constitution.examples)
                for name, _, system in items
            }
        for name, other in ablated.items():
            kls[name] += [kl_per_token(t, o).cpu().tolist() for t, o in zip(teacher, other)]
        if carried is not None:
            carried.add(model, tokenizer, [p for p, _ in chunk], [a for _, a in chunk], teacher, ablated)
        if tick:
            tick(len(chunk))
    rows = [{"principle": name, "text": text, **token_kl(kls[name], n_boot)} for name, text, _ in items]
    return sorted(rows, key=lambda r: -r["value"] if math.isfinite(r["value"]) else math.inf)


def influence(
    model,
    tokenizer,
    constitution,
    prompts: list[str],
    sample_tokens: int = 40,
    seed: int = 0,
    temperature: float = 1.0,
    n_boot: int = 1000,
) -> list[dict]:
    """Principle influence on fresh teacher samples of ``prompts`` (the Constitution tab's check)."""
    from .constitution import render

    sampling = SamplingConfig(max_new_tokens=sample_tokens, temperature=temperature, seed=seed)
    with adapters_off(model):
        answers = sample_rows(
            model,
            tokenizer,
            [(render(constitution), p, i) for i, p in enumerate(prompts)],
            sampling,
            examples=constitution.examples,
        )
    return principle_influence(
        model, tokenizer, constitution, prompts, with_end(tokenizer, answers, sample_tokens), n_boot=n_boot
    )


JUDGE_PROMPT = (
    "Rule: {rule}\n\nQuestion: {prompt}\n\nAnswer: {answer}\n\nDoes the answer follow the rule? Reply with Yes or No."
)


@torch.no_grad()
def judge(
    model, tokenizer, rules: list[str], prompts: list[str], answers: list[str], batch_size: int = 16
) -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) of the judge's first answer token, for each (rule, prompt, answer)."""
    yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = tokenizer.encode("No", add_special_tokens=False)[0]
    pair = TeacherStudent(model, tokenizer, "")
    out = []
    for start in range(0, len(rules), batch_size):
        part = slice(start, start + batch_size)
        batch = [
            Example(JUDGE_PROMPT.format(rule=r, prompt=p, answer=a), [yes])
            for r, p, a in zip(rules[part], prompts[part], answers[part])
        ]
        h = pair.hidden(batch, with_teacher=False)[0]
        out += torch.softmax(pair.lm_head(h)[:, [yes, no]].float(), -1)[:, 0].tolist()
    return out


def judge_report(constitution, answers: dict[str, list[str]], prompts: list[str], scores: dict, n_boot: int) -> dict:
    """Adherence per principle and condition, and how well the judge matches the automatic checks:
    agreement of its yes/no with them (against the base rate of always giving the commoner verdict)
    and the rank AUC of its P(yes) between passing and failing answers."""
    adherence = {
        p.id: {cond: mean_estimate(scores[cond][p.id], n_boot) for cond in answers} for p in constitution.principles
    }
    pairs = [
        (y, p.check.passes(t))
        for p in constitution.principles
        if p.check
        for cond, texts in answers.items()
        for y, t in zip(scores[cond][p.id], texts)
    ]
    passed = [float(ok) for _, ok in pairs]
    return {
        "adherence": adherence,
        "agreement_with_checks": mean_estimate([float((y > 0.5) == ok) for y, ok in pairs], n_boot),
        "majority_baseline": max(np.mean(passed), 1 - np.mean(passed)) if pairs else math.nan,
        "auc_vs_checks": rank_auc([y for y, _ in pairs], [ok for _, ok in pairs]),
        "yes_rate": float(np.mean([y > 0.5 for y, _ in pairs])) if pairs else math.nan,
    }


# --------------------------------------------------------------------------- the evaluation


class _Progress:
    """``tick(k, message)``: k more units done (0: a line within a unit, shown at most once a second),
    with the ETA; raises Stopped when asked to stop."""

    def __init__(self, hooks: Hooks, total: int):
        self.hooks, self.total, self.done = hooks, total, 0
        self.meter = Meter(total, "units")

    def __call__(self, k: int, message: str) -> None:
        if not k and not self.meter.due(self.done):  # a decoding step's: at most one a second
            return
        if self.hooks.should_stop():
            raise Stopped("stopped by request")
        self.done += k
        eta = self.meter.eta(self.done)
        self.hooks.progress(self.done, self.total, message + (f" · ETA {eta_text(eta)}" if eta is not None else ""))

    def say(self, message: str) -> None:
        self.hooks.progress(self.done, self.total, message)


def units(cfg: EvalConfig, the_plan: Plan) -> int:
    """Progress units of an evaluation: sampled answers, then scored answers (KL, then retention), then
    influence prompts, then the robustness suite's."""
    n, students = len(the_plan.prompts), len(the_plan.runs)
    retention_n = len(the_plan.retention_prompts)
    shared = the_plan.retention_prompts is the_plan.prompts
    total = n * (2 + students) + n + retention_n * (1 if shared else 2) + min(cfg.influence_prompts, n)
    return total + (robustness.units(cfg, the_plan) if cfg.robustness else 0)


class _Clock:
    """Wall seconds per step (``with clock("sample_s"):``), and the whole run's wall and CPU seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        return {
            **self.seconds,
            "total_s": time.perf_counter() - self.started,
            "cpu_s": time.process_time() - self.cpu_started,  # all threads: on a busy machine, the work itself
        }


def sample_conditions(model, tok, cfg: EvalConfig, constitution, system: str, texts: list[str], students, tick):
    """{condition: answer ids} for the teacher, the base and each student (label: adapter name) on
    ``texts``; the prompt's index seeds its random stream, shared by every condition."""
    n = len(texts)
    rows = lambda system: [(system, p, i) for i, p in enumerate(texts)]
    with adapters_off(model):
        both = sample_rows(
            model,
            tok,
            rows(system) + rows(None),
            cfg.sampling(),
            batch_size=cfg.gen_batch,
            examples=constitution.examples,
            tick=tick,
            message="sampling the teacher's and the base model's answers",
        )
    ids = {"teacher": both[:n], "base": both[n:]}
    for lab, name in students.items():
        model.set_adapter(name)
        ids[lab] = sample_rows(
            model,
            tok,
            rows(None),
            cfg.sampling(),
            batch_size=cfg.gen_batch,
            tick=tick,
            message=f"sampling the answers of {lab}",
        )
    return ids


def retention_nll(model, tok, cfg: EvalConfig, the_plan: Plan, system: str, base_ids, students, tick):
    """Per-token NLL of the base's own answers to the retention prompts under base, teacher and students;
    ``base_ids`` are its answers to the scored prompts, sampled again only for another retention set."""
    texts = [p["text"] for p in the_plan.retention_prompts]
    if the_plan.retention_prompts is not the_plan.prompts:
        with adapters_off(model):
            base_ids = sample_rows(
                model,
                tok,
                [(None, p, i) for i, p in enumerate(texts)],
                cfg.sampling(),
                batch_size=cfg.gen_batch,
                tick=tick,
                message="sampling the base's reference answers",
            )
    return score_along(
        model,
        tok,
        system,
        the_plan.constitution.examples,
        texts,
        with_end(tok, base_ids, cfg.sample_tokens),
        students,
        cfg.batch_size,
        "nll",
        lambda k: tick(k, "scoring retention (NLL of the base's own answers)"),
    )


def main_scores(constitution, answers: dict, ids: dict, kl: dict, nll: dict, labels: list[str], b: int) -> dict:
    """KL to the teacher, gap closed, retention (also against the teacher's own change), check pass
    rates and answer length per condition, each with its interval."""
    return {
        "kl": {cond: token_kl(kl[cond], b) for cond in ["base", *labels]},
        "gap_closed": {lab: gap_closed_estimate(kl[lab], kl["base"], b) for lab in labels},
        "retention": {cond: retention(nll["base"], nll[cond], b) for cond in ["teacher", *labels]},
        "checks": check_rates(constitution, answers, b),
        "every_check": every_check_rates(constitution, answers, labels, b),
        "length": {cond: text_summary(answers[cond], [len(a) for a in ids[cond]], b) for cond in answers},
        "retention_vs_teacher": {
            lab: robustness.retention_vs_teacher(nll["base"], nll["teacher"], nll[lab], b) for lab in labels
        },
    }


def run(cfg: EvalConfig, store, hooks: Hooks = Hooks(), models_dir=None) -> dict:
    """Sample, score and summarise; returns the results (every number) without storing anything."""
    from .constitution import render
    from .models import default_models_dir

    the_plan = plan(cfg, store)
    models_dir = models_dir or default_models_dir(store.home)
    c, prompts, clock = the_plan.constitution, the_plan.prompts, _Clock()
    texts = [p["text"] for p in prompts]
    tick = _Progress(hooks, units(cfg, the_plan))
    tick.say("loading the model and the adapters")
    with clock("load_s"):
        model, tok, names, chosen = load_students(cfg, the_plan, models_dir)
    system = render(c)
    labels = [label(r["run"]) for r in the_plan.runs]
    students = dict(zip(labels, names))

    with clock("sample_s"):
        ids = sample_conditions(model, tok, cfg, c, system, texts, students, tick)
    teacher_ids = with_end(tok, ids["teacher"], cfg.sample_tokens)
    with clock("score_s"):
        kl = score_along(
            model,
            tok,
            system,
            c.examples,
            texts,
            teacher_ids,
            students,
            cfg.batch_size,
            "kl",
            lambda k: tick(k, "scoring KL(teacher‖x) along the teacher's answers"),
        )
        nll = retention_nll(model, tok, cfg, the_plan, system, ids["base"], students, tick)
    n_influence = min(cfg.influence_prompts, len(prompts))
    carried = Carried(students)
    with clock("influence_s"):
        influence_rows = (
            principle_influence(
                model,
                tok,
                c,
                texts[:n_influence],
                teacher_ids[:n_influence],
                n_boot=cfg.n_boot,
                tick=lambda k: tick(k, "measuring principle influence and what got baked"),
                carried=carried,
            )
            if n_influence
            else []
        )
    answers = {
        cond: [tok.decode(a, skip_special_tokens=True) for a in ids[cond]] for cond in ["base", "teacher", *labels]
    }
    judge_result = None
    if cfg.judge:
        tick.say("asking the judge model")
        with clock("judge_s"):
            judge_result = run_judge(cfg, c, texts, answers, model, tok, models_dir)
    scores = main_scores(c, answers, ids, kl, nll, labels, cfg.n_boot)
    suite = None
    if cfg.robustness:
        with clock("robustness_s"):
            suite = robustness.run_suite(model, tok, the_plan, system, students, answers, teacher_ids, kl, cfg, tick)
    return layout(
        cfg,
        the_plan,
        system,
        chosen,
        labels,
        answers,
        [[tok.decode([t]) for t in a] for a in teacher_ids],
        kl,
        scores,
        clock.total(),
        influence_rows,
        carried.rows(influence_rows, scores["checks"], cfg.n_boot) if n_influence else {},
        judge_result,
        suite,
    )


def run_judge(
    cfg: EvalConfig, constitution, prompts: list[str], answers: dict[str, list[str]], model, tokenizer, models_dir
) -> dict:
    """Judge every answer against every principle; the judge is the evaluated base model unless configured."""
    from .models import ModelError, load_model

    if cfg.judge_model:
        try:
            model, tokenizer = load_model(cfg.judge_model, models_dir=models_dir)
        except ModelError as exc:
            raise EvalError(f"judge model: {exc}") from exc
    scores = {}
    with adapters_off(model):
        for cond, texts in answers.items():
            scores[cond] = {}
            for p in constitution.principles:
                scores[cond][p.id] = judge(model, tokenizer, [p.text] * len(texts), prompts, texts, cfg.batch_size)
    return {
        "model": cfg.judge_model or "the evaluated base model",
        **judge_report(constitution, answers, prompts, scores, cfg.n_boot),
        "scores": scores,
    }


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
        (run_adapter(ctx.store, r["run"]) / EVAL_FILE).write_text(json.dumps(card, indent=1))
    others = [headline(results, r["label"]) for r in results["runs"][1:]]  # each student's own figures
    ctx.set_result({"eval_id": eval_id, **headline(results), "other_runs": others})
