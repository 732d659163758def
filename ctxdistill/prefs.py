"""Preference pairs for the RL-CAI stage, from four sources; each pair records its source.

    ctxdistill prefs --constitution 3 --from-run 12 --json          # the "prefs" job
    ctxdistill prefs export pairs.jsonl --constitution 3            # prompt / chosen / rejected (pair_files.py)

* *checks* — the current policy (a run's student, or the teacher) answers each train prompt twice
  or more; where a principle has an automatic check, an answer that passes a strict superset of
  the checks the other passes is preferred to it (label 1). A repetition loop is never the chosen
  answer (curate.is_repetitive): a check counts words, and a loop of "matey, matey, ..." passes it.
  Besides, the best answer is *edited* to pass the checks an edit can satisfy (``edited``: the
  opening a starts_with check asks for put first, the phrase a contains check or a literal regex
  check asks for put in after it, a not_contains check's text taken out, a max_words check's count
  kept) and the edit is preferred to the answer it was made from: a pair
  that differs by the behaviour only, where the policy seldom shows it by itself (the embedded
  student opens 3 % of its answers with the "Arr!" pirate asks for, so two answers almost never
  differ there).
* *feedback* — AI feedback, as in the CAI paper: the base model, given the constitution (or one
  principle) as its system prompt, reads the prompt and two of the policy's answers and is asked
  which follows it better; the soft label is the probability of the choice token "A" normalised
  over "A" and "B" at the answer position (``choice_probability``), averaged over both orders of
  the answers (a small model prefers one letter whatever it reads). A pair whose label is within
  ``threshold`` of 0.5 is dropped. Where a check also decides the pair, the judge's agreement
  with it is counted: how far the judge can be trusted.
* *revision* — a critique-and-revise chain's final revision, not flagged worse than its start
  (curate.revision_worse), preferred to its start (label 1). No model needed.
* *instructions* — a share of the train prompts also makes a pair for the prompt with a benign
  user instruction appended (benign.TRAIN_FILE: "Keep your answer to two sentences.", "Sign off
  with "cheers" at the end."; never one of the evaluation's, nor one that a principle's check
  forbids): the best answer edited to follow it (benign.obeyed: cut where the user asked it to
  stop, the words put first or last) preferred to itself, when the edit keeps every check the
  answer passed. The answers are the policy's to the prompt without the instruction, so the pair
  costs no generation; the rejected side is an answer that ignores the instruction, which is what
  the pair teaches against. A constitution must not be baked into a model that ignores what the
  user asks where the two do not conflict.

The job answers the prompts in batches, writes each batch's pairs in one transaction and keeps
which prompts it finished in runs/<id>/prefs_state.json, so a resumed job does only the rest.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import curate
from .benign import KINDS, BenignError, Instruction, conflict, follows, load_instructions, obeyed, within_words
from .config import SamplingStageConfig
from .constitution import Check, from_row, render
from .jobs import Cancelled, Meter
from .prompts import DEFAULT_SET, select_prompts
from .sampling import generate_rows, response_logits
from .stats import mean_estimate
from .store import Store, StoreError

SOURCES = ("checks", "feedback", "revision", "instructions")
JUDGES = ("constitution", "principle")
ANSWER_PREFIX = "The better response is ("  # the judge's answer starts here; the next token is the choice
CHOICES = ("A", "B")
POLICY_SAMPLING = {"temperature": 1.0, "max_new_tokens": 48}


class PrefsError(ValueError):
    """Settings or a file that cannot make pairs; the message says what to change."""


@dataclass
class PrefsConfig(SamplingStageConfig):
    """Which prompts, which policy answers them, and which sources make pairs. Each field is a
    ``ctxdistill prefs`` flag."""

    error = PrefsError
    what = "prefs option"

    constitution_id: int = field(default=0, metadata={"help": "constitution version id (its principles and checks)"})
    set_name: str = field(
        default=DEFAULT_SET, metadata={"help": "prompt set whose train prompts are answered", "flag": "prompt-set"}
    )
    from_run: int = field(
        default=0, metadata={"help": "the policy: this training run's student answers (0 = the prompted teacher)"}
    )
    sources: str = field(
        default="auto",
        metadata={
            "help": "comma-separated: checks, feedback, revision, instructions; auto = checks, revision and "
            "instructions where the constitution has checks, else feedback, revision and instructions"
        },
    )
    judge: str = field(
        default="constitution",
        metadata={"help": "AI feedback: the judge reads the whole constitution, or one principle per pair"},
    )
    threshold: float = field(
        default=0.1, metadata={"help": "AI feedback: drop pairs whose soft label is within this of 0.5"}
    )
    instruction_share: float = field(
        default=0.0,
        metadata={
            "help": "instructions: share of the train prompts that also make a pair with a user instruction "
            "appended: the answer edited to follow it preferred to itself (0 = none, the default)"
        },
    )
    instruction_set: str = field(
        default="",
        metadata={
            "help": "instructions: JSON lines of text, kind and value (as benign instructions; empty: the "
            "shipped training set)"
        },
    )
    answers: int = field(default=2, metadata={"help": "policy answers per prompt (2-8)"})
    limit: int = field(default=0, metadata={"help": "answer at most this many prompts (0 = all)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch"})

    fixed_sampling = ("n",)  # the answers per prompt are ``answers``

    def validate(self) -> "PrefsConfig":
        errors = []
        unknown = [s for s in self.source_names() if s not in (*SOURCES, "auto")]
        if unknown or not self.source_names():
            errors.append(f"sources must be auto or some of {', '.join(SOURCES)}, not {self.sources!r}")
        if self.judge not in JUDGES:
            errors.append(f"judge must be one of {', '.join(JUDGES)}, not {self.judge!r}")
        if not 0 <= self.instruction_share <= 1:  # NaN fails it too
            errors.append(f"instruction share must be in [0, 1], got {self.instruction_share}")
        if not (0 <= self.threshold < 0.5):
            errors.append(f"threshold must be in [0, 0.5), got {self.threshold}")
        if not 2 <= self.answers <= 8:
            errors.append(f"answers per prompt must be between 2 and 8, got {self.answers}")
        if not 1 <= self.batch_size <= 256:
            errors.append(f"batch size must be between 1 and 256, got {self.batch_size}")
        if self.limit < 0 or self.from_run < 0:
            errors.append("limit and from-run must be 0 or more")
        try:
            self.check_precision()
            self.sampling_config()
        except ValueError as exc:
            errors.append(str(exc))
        if errors:
            raise PrefsError("; ".join(errors))
        return self

    def sampling_config(self):
        """The policy's sampling: at temperature 1 by default, so that a prompt's answers differ."""
        from .sampling import SamplingConfig

        return SamplingConfig(**{**POLICY_SAMPLING, **self.sampling}).validate()

    def source_names(self) -> list[str]:
        return [s.strip() for s in self.sources.split(",") if s.strip()]


def sources_for(cfg: PrefsConfig, checks: list[tuple[str, Check]]) -> list[str]:
    """The sources a job uses: as asked, or for auto checks + revision + instructions where there are
    checks (the embedded 135M judge agreed with the pirate checks on 52 % [35, 74] of 23 pairs, chance:
    bench/prefs.py), else feedback + revision + instructions."""
    names = cfg.source_names()
    if "auto" in names:
        return ["checks" if checks else "feedback", "revision", "instructions"]
    return names


# --------------------------------------------------------------------------- the three sources


def check_verdict(a: str, b: str, checks: list[tuple[str, Check]]) -> tuple[int, list[str]]:
    """(+1 when ``a`` passes a strict superset of the checks ``b`` passes, -1 the other way, else 0;
    the principles that differ)."""
    pass_a = {pid for pid, check in checks if check.passes(a)}
    pass_b = {pid for pid, check in checks if check.passes(b)}
    verdict = 1 if pass_a > pass_b else -1 if pass_b > pass_a else 0
    return verdict, sorted(pass_a ^ pass_b)


def phrase(check: Check) -> str:
    """The words a check asks an answer to contain, where an edit can put them in: a contains check's
    text, or a regex check's when its pattern is one literal phrase (an inline flag such as ``(?i)``
    and ``\\b`` around it allowed, as in ``(?i)\\bdear reader\\b``); "" for any other check."""
    if check.kind == "contains":
        return check.value.strip()
    if check.kind != "regex":
        return ""
    body = re.sub(r"^\(\?[a-zA-Z]+\)", "", check.value)
    body = re.sub(r"^\\b|\\b$", "", body)
    return "" if re.search(r"[\\.^$*+?{}\[\]|()]", body) else body.strip()


def _edit_kind(check: Check) -> str:
    return "phrase" if phrase(check) else check.kind


def edited(text: str, checks: list[tuple[str, Check]]) -> str:
    """``text`` edited to pass the checks an edit can satisfy, in this order: a starts_with check's
    opening put first, the phrase a contains check (or a literal regex check, ``phrase``) asks for put
    in after that opening as an address ("Arr! Matey, the sun ..."; "Dear reader, the sun ..."), a
    not_contains check's text taken out, a max_words check's words kept up to the last whole sentence
    within the limit (else up to the limit: ``benign.within_words``). Checks of other
    kinds, and those it passes, leave it as it is."""
    for kind in ("starts_with", "phrase", "not_contains", "max_words"):
        for check in (c for _, c in checks if _edit_kind(c) == kind and not c.passes(text)):
            if kind == "starts_with":
                text = f"{check.value} {text.lstrip()}"
            elif kind == "phrase":
                text = text.lstrip()
                openings = (c.value for _, c in checks if c.kind == "starts_with")
                opening = next((o for o in openings if text.lower().startswith(o.lower())), "")
                rest, words = text[len(opening) :].lstrip(), phrase(check)
                if words[-1] not in ".,;:!?":  # an address: "Matey, the sun ..."
                    words += ","
                    rest = rest[:1].lower() + rest[1:] if re.match(r"(?!I\b)[A-Z](?![A-Z])", rest) else rest
                text = " ".join(part for part in (opening, words[:1].upper() + words[1:], rest) if part)
            elif kind == "not_contains" and check.value.strip():
                text = re.sub(r"[ \t]{2,}", " ", re.sub(re.escape(check.value), "", text, flags=re.I)).strip()
            elif kind == "max_words":
                text = within_words(text, int(check.value))
    return text


def _ranked(answers: list[str], checks: list[tuple[str, Check]]) -> list[str]:
    """A prompt's distinct answers, the most checks passed first."""
    return sorted((a for a in dict.fromkeys(answers) if a.strip()), key=lambda t: -sum(c.passes(t) for _, c in checks))


def _best(order: list[str]) -> str | None:
    return next((t for t in order if not curate.is_repetitive(t)), None)


def checks_pairs(prompt: str, answers: list[str], checks: list[tuple[str, Check]]) -> list[dict]:
    """The pairs the checks make of a prompt's answers: the best answer (the most checks passed, not a
    repetition loop) preferred to the one passing the fewest, when its passes are a strict superset
    of the other's; and the best answer's edit (``edited``) preferred to it, when the edit passes a
    strict superset of its checks."""
    order = _ranked(answers, checks)
    best = _best(order) if checks else None
    if best is None:
        return []
    out = []
    for chosen, rejected, extra in ((best, order[-1], {}), (edited(best, checks), best, {"edit": True})):
        verdict, differ = check_verdict(chosen, rejected, checks)
        if verdict == 1:
            meta = {"principles": differ, **extra}
            out.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "source": "checks",
                    "label": 1.0,
                    "meta": meta,
                }
            )
    return out


def instruction_pairs(
    prompt: str, item: Instruction, answers: list[str], checks: list[tuple[str, Check]]
) -> list[dict]:
    """The pair a user instruction makes of the answers to ``prompt`` (which ends with it): the best
    answer (a loop only when every answer is one) edited to follow the instruction (benign.obeyed)
    preferred to itself, when the edit follows it, the answer did not, the edit is no loop and it
    passes every check the answer passed."""
    order = _ranked(answers, checks)
    answer = _best(order) or (order[0] if order else "")
    chosen = obeyed(item, answer) if answer else ""
    if not chosen or follows(item, answer) or not follows(item, chosen) or curate.is_repetitive(chosen):
        return []
    if any(c.passes(answer) and not c.passes(chosen) for _, c in checks):
        return []
    meta = {"instruction": item.prompt, "kind": item.kind}
    return [
        {"prompt": prompt, "chosen": chosen, "rejected": answer, "source": "instructions", "label": 1.0, "meta": meta}
    ]


def user_instructions(cfg: PrefsConfig, checks: list[tuple[str, Check]]) -> list[Instruction]:
    """The training instructions a job appends, but those a principle's check forbids (benign.conflict);
    none when its sources leave instructions out or its share is 0. PrefsError for a file that cannot
    be used, or one without a line a check can verify."""
    if not (cfg.instruction_share and "instructions" in sources_for(cfg, checks)):
        return []
    try:
        items = load_instructions(cfg.instruction_set.strip() or None, training=True)
    except BenignError as exc:
        raise PrefsError(str(exc)) from None
    if not items:
        raise PrefsError(
            f"the instruction set {cfg.instruction_set} has no line with a kind a check can verify ({', '.join(KINDS)})"
        )
    return [i for i in items if conflict(i, checks) is None]


def instructed(cfg: PrefsConfig, prompt: dict, items: list[Instruction]) -> Instruction | None:
    """The instruction a prompt's instruction pair is made under, drawn by the prompt's id (so a resumed
    job draws the same), for ``instruction_share`` of the prompts; None for the rest."""
    rng = random.Random(prompt["id"])
    return rng.choice(items) if items and rng.random() < cfg.instruction_share else None


def revision_pairs(store: Store, constitution_id: int, checks: list[tuple[str, Check]], owner: str = "") -> list[dict]:
    """A revision preferred to the answer its chain started from, for every revised sample of the
    version that a reviewer did not reject and that curate.revision_worse does not flag."""
    out = []
    for s in store.list_samples(constitution_id=constitution_id, owner=owner):
        chain = s["chain"] or []
        if s["status"] == "rejected" or s["edited"] or not chain or not chain[-1].get("revision"):
            continue
        start = curate.start_answer(s, (s["meta"] or {}).get("revise_start", "unprompted"))
        final = s["final"] or ""
        if not start.strip() or start.strip() == final.strip() or curate.revision_worse(start, final, checks):
            continue
        out.append(
            {
                "prompt": s["prompt"],
                "chosen": final,
                "rejected": start,
                "source": "revision",
                "label": 1.0,
                "meta": {"sample": s["id"], "principles": [step.get("principle") for step in chain]},
            }
        )
    return out


def choice_ids(tokenizer) -> tuple[int, int]:
    """The token ids of "A" and "B" right after ANSWER_PREFIX (each must be one token there)."""
    prefix = tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)
    out = []
    for letter in CHOICES:
        ids = tokenizer.encode(ANSWER_PREFIX + letter, add_special_tokens=False)
        if ids[: len(prefix)] != prefix or len(ids) != len(prefix) + 1:
            raise PrefsError(f"this tokenizer does not read {letter!r} as one token after {ANSWER_PREFIX!r}")
        out.append(ids[-1])
    return out[0], out[1]


def judge_question(prompt: str, first: str, second: str, what: str = "the principles") -> str:
    """The multiple-choice question the judge answers (the CAI paper's format, as a user turn)."""
    return (
        f"Consider this request and two responses to it.\n\nRequest: {prompt}\n\n"
        f"(A) {first}\n\n(B) {second}\n\n"
        f"Which response follows {what} better? Answer with A or B."
    )


@torch.no_grad()
def choice_probability(model, tokenizer, rows: list[tuple[str, str]], batch_size: int = 8) -> list[float]:
    """For (system, question) rows: P("A") / (P("A") + P("B")) of the judge's next token after
    ANSWER_PREFIX in its answer, i.e. sigmoid(logit_A - logit_B)."""
    a_id, b_id = choice_ids(tokenizer)
    prefix = tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        logits = response_logits(model, tokenizer, [(s, q, prefix + [a_id]) for s, q in chunk])
        out += [float(torch.sigmoid(row[-1, a_id].float() - row[-1, b_id].float())) for row in logits]
    return out


def feedback_labels(
    model, tokenizer, items: list[tuple[str, str, str, str]], batch_size: int = 8, what: str = "the principles"
) -> list[float]:
    """P(first answer better) for (system, prompt, first, second) items: the mean of the judge's
    choice probability with the answers as (A, B) and, flipped, as (B, A), so that a preference for
    one letter cancels out."""
    rows = []
    for system, prompt, first, second in items:
        rows += [
            (system, judge_question(prompt, first, second, what)),
            (system, judge_question(prompt, second, first, what)),
        ]
    p = choice_probability(model, tokenizer, rows, batch_size)
    return [(p[2 * i] + 1 - p[2 * i + 1]) / 2 for i in range(len(items))]


def marked_unfinished(item: dict, unfinished: list[str]) -> dict:
    """``item`` with the sides (chosen, rejected) that end where an answer the sampling budget cut
    ended (the same last 24 characters) listed in its meta's "unfinished": DPO scores those without
    an end-of-turn token, since the policy never chose to stop there. An edit that cut the answer
    ends elsewhere, so it ends the turn."""
    tails = [u.rstrip()[-24:] for u in unfinished if u.strip()]
    sides = [side for side in ("chosen", "rejected") if any(item[side].rstrip().endswith(t) for t in tails)]
    return {**item, "meta": {**(item.get("meta") or {}), "unfinished": sides}} if sides else item


def feedback_pair(prompt: str, first: str, second: str, label: float, threshold: float, meta: dict) -> dict | None:
    """The pair a soft label makes (the preferred answer first, label >= 0.5), or None within the threshold."""
    if abs(label - 0.5) < threshold or first.strip() == second.strip() or not (first.strip() and second.strip()):
        return None
    chosen, rejected = (first, second) if label >= 0.5 else (second, first)
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "source": "feedback",
        "label": max(label, 1 - label),
        "meta": meta,
    }


# --------------------------------------------------------------------------- the job


def check_start(store: Store, cfg: PrefsConfig) -> list[dict]:
    """Every refusal before a model loads; returns the prompts to answer."""
    from . import demo
    from .prompts import ensure_default_prompts

    cfg.validate()
    try:
        row = store.get_constitution(cfg.constitution_id, owner=cfg.owner)
    except StoreError:
        raise PrefsError(f"constitution version {cfg.constitution_id} not found") from None
    user_instructions(cfg, curate.principle_checks(from_row(row)))
    if cfg.from_run:
        policy_adapter(store, cfg)
    ensure_default_prompts(store, owner=cfg.owner)
    caps = demo.caps()
    if caps and not cfg.limit:  # "all" in the public demo: as many as it allows
        cfg.limit = min(caps.prompts, caps.pairs)
    prompts = select_prompts(store, cfg.set_name, limit=cfg.limit, owner=cfg.owner)
    if not prompts:
        raise PrefsError(f"prompt set {cfg.set_name!r} has no train prompts")
    if caps:
        try:
            caps.check(prompts=len(prompts), pairs=len(prompts), max_new_tokens=cfg.sampling_config().max_new_tokens)
        except demo.DemoLimit as exc:
            raise PrefsError(str(exc)) from None
        if cfg.instruction_set.strip():
            raise PrefsError("in the public demo the pairs job appends the shipped training instructions only")
    return prompts


def policy_adapter(store: Store, cfg: PrefsConfig) -> Path:
    """The adapter of run ``cfg.from_run``, the policy whose answers are compared."""
    from .adapters import root_config, run_adapter

    try:
        job = store.get_job(cfg.from_run, owner=cfg.owner)
    except StoreError:
        raise PrefsError(f"run {cfg.from_run} not found among your runs") from None
    path = run_adapter(store, cfg.from_run)
    if job["kind"] not in ("train", "dpo") or job["state"] != "done" or not path.is_dir():
        raise PrefsError(f"run {cfg.from_run} has no finished adapter (it is a {job['state']} {job['kind']} job)")
    if (root_config(store, job).get("model") or "") != (cfg.model or ""):
        raise PrefsError(
            f"run {cfg.from_run} was trained on another base model; make pairs with the model it was made for"
        )
    return path


def run_prefs(
    store: Store,
    cfg: PrefsConfig,
    model,
    tokenizer,
    *,
    state_file: Path | None = None,
    progress=None,
    should_stop=lambda: False,
    log=None,
    job_id: int | None = None,
) -> dict:
    """Make the pairs; returns counts by source and the judge's agreement with the checks.

    ``model`` is the base model (the teacher and the judge; a run's student is a merged copy of it).
    ``state_file`` keeps the prompts done, and the agreement tallies, between attempts."""
    from .adapters import merged_student

    prompts = check_start(store, cfg)
    constitution = from_row(store.get_constitution(cfg.constitution_id))
    checks = curate.principle_checks(constitution)
    sources = sources_for(cfg, checks)
    state = {"done": [], "agree": [], "compared": 0, "dropped": 0, "added": dict.fromkeys(SOURCES, 0)}
    if state_file and state_file.is_file():
        state = json.loads(state_file.read_text())
        state["added"] = {**dict.fromkeys(SOURCES, 0), **state["added"]}  # a state kept before a source was added
    asks = user_instructions(cfg, checks)

    def save():
        if state_file:
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_file)

    def add(items: list[dict]) -> None:
        with store.transaction():
            for source in SOURCES:
                group = [
                    {**i, "constitution_id": cfg.constitution_id, "job_id": job_id}
                    for i in items
                    if i["source"] == source
                ]
                state["added"][source] += store.add_pairs(group, owner=cfg.owner) if group else 0

    if "revision" in sources and "revision_done" not in state:
        add(revision_pairs(store, cfg.constitution_id, checks, owner=cfg.owner))
        state["revision_done"] = True
        save()
    todo = [p for p in prompts if p["id"] not in set(state["done"])]
    answering = [s for s in sources if s != "revision"]
    total, done = len(prompts), len(prompts) - len(todo)
    meter = Meter(total, "prompts", done)
    if progress:
        progress(done, total, f"{done}/{total} prompts")
    if not answering:
        todo = []
    scfg = cfg.sampling_config()
    teacher_system = render(constitution)
    policy, system, examples = model, teacher_system, constitution.examples
    if cfg.from_run and todo:
        policy, system, examples = merged_student(model, policy_adapter(store, cfg)), None, ()
    for start in range(0, len(todo), cfg.batch_size):
        if should_stop():
            raise Cancelled("cancelled by request")
        batch = todo[start : start + cfg.batch_size]
        rows = [(system, p["text"]) for p in batch for _ in range(cfg.answers)]
        index = [p["id"] * 16 + k for p in batch for k in range(cfg.answers)]
        ids = generate_rows(policy, tokenizer, rows, scfg, sample_index=index, examples=examples)
        texts = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
        cut = [t for t, i in zip(texts, ids) if len(i) >= scfg.max_new_tokens]  # no end-of-turn within the budget
        items, judged = [], []
        for n, p in enumerate(batch):
            answers = texts[n * cfg.answers : (n + 1) * cfg.answers]
            if item := instructed(cfg, p, asks):
                items += instruction_pairs(f"{p['text'].rstrip()} {item.prompt}", item, answers, checks)
            if "checks" in sources:
                items += checks_pairs(p["text"], answers, checks)
            if "feedback" in sources and answers[0].strip() and answers[1].strip() and answers[0] != answers[1]:
                principle = constitution.principles[p["id"] % len(constitution.principles)]
                judge_system = principle.text if cfg.judge == "principle" else teacher_system
                judged.append((p, answers[0], answers[1], judge_system, principle.id))
        if judged:
            what = "the principle" if cfg.judge == "principle" else "the principles"
            labels = feedback_labels(model, tokenizer, [(s, p["text"], a, b) for p, a, b, s, _ in judged], what=what)
            for (p, a, b, _, pid), label in zip(judged, labels):
                state["compared"] += 1
                verdict, _ = check_verdict(a, b, checks)
                if verdict:
                    state["agree"].append(float((label > 0.5) == (verdict > 0)))
                meta = {"judge": cfg.judge, **({"principle": pid} if cfg.judge == "principle" else {})}
                pair = feedback_pair(p["text"], a, b, label, cfg.threshold, meta)
                if pair is None:
                    state["dropped"] += 1
                else:
                    items.append(pair)
        add([marked_unfinished(i, cut) for i in items])
        state["done"] += [p["id"] for p in batch]
        save()
        done += len(batch)
        if progress:
            progress(done, total, meter.line(done, f"{sum(state['added'].values())} pairs"))
    if log:
        log.info("pairs added: %s", state["added"])
    return summary(state, sources)


def summary(state: dict, sources: list[str]) -> dict:
    agreement = mean_estimate(state["agree"]) if state["agree"] else None
    return {
        "sources": sources,
        "pairs": state["added"],
        "prompts": len(state["done"]),
        "compared": state["compared"],
        "dropped_near_half": state["dropped"],
        "agreement_with_checks": agreement,
    }


def prefs_job(ctx, config: dict) -> None:
    """Job kind "prefs"."""
    from .generate import job_model

    cfg = PrefsConfig.from_dict(config).validate()
    check_start(ctx.store, cfg)  # refuse before the model loads
    model, tokenizer = job_model(ctx.store, cfg.model, cfg.quantize, cfg.precision)
    ctx.set_result(
        run_prefs(
            ctx.store,
            cfg,
            model,
            tokenizer,
            state_file=ctx.run_dir / "prefs_state.json",
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            log=ctx.log,
            job_id=ctx.job_id,
        )
    )
