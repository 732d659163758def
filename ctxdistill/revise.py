"""Critique -> revision chains (Bai et al. 2022, SL-CAI).

    ctxdistill revise --constitution assets/constitutions/pirate.yaml --rounds 2

For each sample, K rounds: pick a principle (each in turn, or at random), ask
the model to critique the current answer with that principle's critique
request, then to revise it with the revision request. The first answer is the
unprompted one (as in SL-CAI) or the prompted one. Every round is one step of
the sample's chain {principle, critique_request, critique, revision_request,
revision, cut_off}; the last revision becomes the final text unless a
reviewer edited it. The default start is the prompted answer: on the embedded
SmolLM2-135M, 38 % of one-round revisions of the unprompted answer were worse
than it, 21 % of those of the prompted answer (bench/revise_quality.py, 24 prompts
of the default set with the pirate and concise constitutions).

A revision worse than the answer it revised (curate.revision_worse: it loops, it
lost what the answer was about, it fails a check the answer passed) is not taken
with keep_if_worse (the default): the round keeps its answer and records the
model's text as `discarded` with the reasons as `worse`. Small models often
answer a critique request with a loop ("The answer to the question is: ..."),
and without this the loop would become the text to train on.

Each round is a fresh conversation — user prompt, current answer, critique
request (then the critique and the revision request) — so the context stays
bounded however many rounds run. The model reads it with the constitution as
its system prompt, after the constitution's few-shot examples (the HF recipe's
system_chat), so both are one shared prefix whose key/value cache is computed
once per run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import curate
from .config import SamplingStageConfig
from .constitution import Principle, from_row, render
from .curate import STARTS, start_answer
from .generate import Stopped, job_model, never, token_progress
from .jobs import Meter
from .sampling import Prefixes, generate_rows, split_rows
from .store import SAMPLE_STATUSES, Store

ORDERS = ("cycle", "random")


@dataclass
class ReviseConfig(SamplingStageConfig):
    """Which samples to revise and how."""

    what = "revise option"
    fixed_sampling = ("n",)  # one revision per sample

    constitution_id: int = field(default=0, metadata={"help": "constitution version id"})
    set_name: str = field(
        default="", metadata={"help": "only samples of this prompt set (empty: all)", "flag": "prompt-set"}
    )
    rounds: int = field(default=1, metadata={"help": "critique/revision rounds per sample (1-8)"})
    order: str = field(default="cycle", metadata={"help": "principle per round: cycle (each in turn) or random"})
    start: str = field(
        default="prompted",
        metadata={"help": "answer to start from: prompted (the teacher's) or unprompted (as in SL-CAI)"},
    )
    keep_if_worse: bool = field(
        default=True,
        metadata={
            "help": "keep the answer a round revised when its revision is worse (a loop, lost content, a check it "
            "newly fails); the revision is kept in the chain as discarded"
        },
    )
    status: str = field(default="pending", metadata={"help": "only samples with this status (empty: all)"})
    batch_size: int = field(default=8, metadata={"help": "samples per batch"})
    limit: int = field(default=0, metadata={"help": "revise at most this many samples (0 = all)"})

    def validate(self) -> "ReviseConfig":
        errors = []
        if not 1 <= self.rounds <= 8:
            errors.append(f"rounds must be between 1 and 8, got {self.rounds}")
        if self.order not in ORDERS:
            errors.append(f"order must be cycle or random, not {self.order!r}")
        if self.start not in STARTS:
            errors.append(f"start must be unprompted or prompted, not {self.start!r}")
        if self.status and self.status not in SAMPLE_STATUSES:
            errors.append(f"status must be one of {', '.join(SAMPLE_STATUSES)} or empty, not {self.status!r}")
        if self.batch_size < 1:
            errors.append(f"batch size must be at least 1, got {self.batch_size}")
        if errors:
            raise ValueError("; ".join(errors))
        self.check_precision()
        self.sampling_config()
        return self


def critique_request(p: Principle) -> str:
    return p.critique.strip() or (
        f"Identify specific ways in which the assistant's last response does not "
        f"follow this principle: {p.text.strip()}"
    )


def revision_request(p: Principle) -> str:
    return p.revision.strip() or (
        f"Please rewrite the assistant's response so that it follows this principle: {p.text.strip()}"
    )


def pick_principle(principles: list[Principle], order: str, seed: int, sample_id: int, round_: int) -> Principle:
    """Round r uses principle r (mod P) in turn, or one drawn from a stream seeded by (seed, sample, round)."""
    if order == "cycle":
        return principles[round_ % len(principles)]
    return random.Random(f"{seed}:{sample_id}:{round_}").choice(principles)


def critique_messages(prompt: str, answer: str, principle: Principle) -> list[dict]:
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": critique_request(principle)},
    ]


def revision_messages(prompt: str, answer: str, principle: Principle, critique: str) -> list[dict]:
    return critique_messages(prompt, answer, principle) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": revision_request(principle)},
    ]


def answer_cut_off(sample: dict, chain: list[dict], start: str) -> bool:
    """Whether the answer the next round revises was cut off by the token limit."""
    if chain:
        return bool(chain[-1]["cut_off"])
    unprompted = start == "unprompted" and sample["unprompted"] or not sample["prompted"]
    return bool(sample["meta"].get("unprompted_cut_off" if unprompted else "cut_off"))


def check_start(store: Store, cfg: ReviseConfig) -> None:
    """Refuse, before a job is queued, filters that leave no sample to revise."""
    from .safety import quote

    if not store.count_samples(
        constitution_id=cfg.constitution_id,
        set_name=cfg.set_name or None,
        status=cfg.status or None,
        split="train",
        owner=cfg.owner,
    )["total"]:
        raise ValueError(
            f"constitution version {cfg.constitution_id} has no {cfg.status or ''} samples"
            f"{' in set ' + quote(cfg.set_name) if cfg.set_name else ''} to revise: run generate first"
        )


def run_revise(
    store: Store, cfg: ReviseConfig, model, tokenizer, *, progress=None, should_stop=never, log=None
) -> dict:
    """Run the critique/revision rounds still missing from each selected sample; returns a summary.

    A sample whose chain already has `rounds` steps is skipped, and each round of a batch
    is written before the next starts, so a resumed job only does the rest. Progress counts
    tokens; a stop during a round's revisions keeps the samples whose revision had ended."""
    from .jobs import Cancelled

    cfg.validate()
    scfg = cfg.sampling_config()
    constitution = from_row(store.get_constitution(cfg.constitution_id))
    if not constitution.principles:
        raise ValueError("the constitution has no principles to critique with")
    system, examples = render(constitution), constitution.examples
    checks = curate.principle_checks(constitution)
    samples = store.list_samples(
        constitution_id=cfg.constitution_id,
        set_name=cfg.set_name or None,
        status=cfg.status or None,
        split="train",
        owner=cfg.owner,
    )
    samples = samples[: cfg.limit] if cfg.limit else samples
    if not samples:
        raise ValueError("no samples to revise: run generate first (or widen the status/set filter)")
    # progress counts tokens: a round's budget is a critique and a revision of up to max_new_tokens each
    per_round = 2 * scfg.max_new_tokens
    rounds_done = sum(min(len(s["chain"]), cfg.rounds) for s in samples)
    total, done = len(samples) * cfg.rounds * per_round, rounds_done * per_round
    todo = [s for s in samples if len(s["chain"]) < cfg.rounds and start_answer(s, cfg.start)]
    if log and rounds_done:
        log.info("resuming: %d of %d rounds already done", rounds_done, len(samples) * cfg.rounds)
    meter = Meter(total, "tokens", done)
    if progress:
        progress(done, total, meter.line(done))
    prefixes, new_tokens, steps = None, 0, 0

    def generate(conversations: list[list[dict]], seeds: list[int], start: int) -> list[list[int]]:
        nonlocal prefixes, new_tokens
        rows = [(system, c) for c in conversations]
        prefix_ids = split_rows(tokenizer, rows, examples)[0]
        if prefixes is None or prefixes.ids != prefix_ids:
            prefixes = Prefixes(model, prefix_ids)
        end = start + len(rows) * scfg.max_new_tokens
        on_token = token_progress(start, end, len(rows), meter, progress, should_stop)
        out = generate_rows(
            model, tokenizer, rows, scfg, sample_index=seeds, examples=examples, prefixes=prefixes, on_token=on_token
        )
        new_tokens += sum(map(len, out))
        return out

    for b in range(0, len(todo), cfg.batch_size):
        batch = todo[b : b + cfg.batch_size]
        chains = {s["id"]: list(s["chain"]) for s in batch}
        while active := [s for s in batch if len(chains[s["id"]]) < cfg.rounds]:
            if should_stop():
                raise Cancelled("cancelled by request")
            picked, answers = [], []
            for s in active:
                chain = chains[s["id"]]
                picked.append(pick_principle(constitution.principles, cfg.order, scfg.seed, s["id"], len(chain)))
                answers.append(chain[-1]["revision"] if chain else start_answer(s, cfg.start))
            seeds = [s["id"] * 64 + 2 * len(chains[s["id"]]) for s in active]
            try:  # a stop during the critiques keeps nothing of this round: no revision is complete
                critiques = [
                    tokenizer.decode(ids, skip_special_tokens=True).strip()
                    for ids in generate(
                        [critique_messages(s["prompt"], a, p) for s, a, p in zip(active, answers, picked)], seeds, done
                    )
                ]
            except Stopped:
                raise Cancelled("cancelled by request") from None
            stopped = None
            try:
                revised = generate(
                    [revision_messages(s["prompt"], a, p, c) for s, a, p, c in zip(active, answers, picked, critiques)],
                    [k + 1 for k in seeds],
                    done + len(active) * scfg.max_new_tokens,
                )
            except Stopped as stop:  # the samples whose revision had ended keep their round
                stopped, revised = stop, stop.out
            items = []
            for row, (s, a, p, critique, ids) in enumerate(zip(active, answers, picked, critiques, revised)):
                if stopped is not None and row not in stopped.ended():
                    continue
                step = {
                    "principle": p.id,
                    "critique_request": critique_request(p),
                    "critique": critique,
                    "revision_request": revision_request(p),
                    "revision": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    "cut_off": len(ids) >= scfg.max_new_tokens,
                }
                if cfg.keep_if_worse and (worse := curate.revision_worse(a, step["revision"], checks)):
                    step.update(
                        revision=a,
                        discarded=step["revision"],
                        worse=worse,
                        cut_off=answer_cut_off(s, chains[s["id"]], cfg.start),
                    )
                chains[s["id"]].append(step)
                items.append(
                    {
                        "prompt_id": s["prompt_id"],
                        "constitution_id": s["constitution_id"],
                        "idx": s["idx"],
                        "chain": chains[s["id"]],
                        "meta": {**s["meta"], "revise_start": cfg.start},
                    }
                )
            if items:
                curate.flag_samples(store, store.upsert_samples(items), checks)
            if stopped is not None:
                if log:
                    log.info("stopped: kept the %d revisions of the round that had ended", len(items))
                raise Cancelled("cancelled by request")
            steps += len(active)
            done += len(active) * per_round
            if progress:
                progress(done, total, meter.line(done))
    flags = curate.refresh_flags(store, cfg.constitution_id, owner=cfg.owner)
    return {
        "samples": len(samples),
        "revised_now": len(todo),
        "rounds_done_now": steps,
        "new_tokens": new_tokens,
        "flags": flags,
        "constitution_id": cfg.constitution_id,
    }


def revise_job(ctx, config: dict) -> None:
    """Job kind "revise"."""
    cfg = ReviseConfig.from_dict(config).validate()
    ctx.progress(0, 0, "loading the model")
    model, tokenizer = job_model(ctx.store, cfg.model, cfg.quantize, cfg.precision)
    ctx.set_result(
        run_revise(ctx.store, cfg, model, tokenizer, progress=ctx.progress, should_stop=ctx.should_stop, log=ctx.log)
    )
