"""The sampling job: teacher samples out of a prompt set.

    ctxdistill generate --prompt-set default --constitution assets/constitutions/pirate.yaml

It answers every train prompt of a set (prompts.py) with the constitution in context (n samples
each) and once without it, for contrast. It is batched, reuses the key/value cache of the two
system prefixes for the whole run, writes each prompt's answers in one transaction and skips
answers already in the store, so a resumed job only does the rest. Held-out prompts are never
sampled here: they are for evaluation only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from . import curate
from .config import SamplingStageConfig
from .constitution import from_row, render
from .jobs import Meter
from .prompts import DEFAULT_SET, select_prompts
from .sampling import Prefixes, generate_rows, split_rows
from .store import Store

MAX_BATCH = 1024  # prompts per batch: more is a typo, and would not fit in memory anyway


@dataclass
class GenerateConfig(SamplingStageConfig):
    """Which prompts to answer and how to batch them (sampling itself: SamplingConfig)."""

    what = "generate option"

    set_name: str = field(
        default=DEFAULT_SET, metadata={"help": "prompt set to answer (train split only)", "flag": "prompt-set"}
    )
    constitution_id: int = field(default=0, metadata={"help": "constitution version id"})
    batch_size: int = field(default=16, metadata={"help": "prompts per batch"})
    limit: int = field(default=0, metadata={"help": "answer at most this many prompts (0 = all)"})
    search: str = field(default="", metadata={"help": "only prompts containing this text"})
    category: str = field(default="", metadata={"help": "only prompts of this category"})
    unprompted: bool = field(default=True, metadata={"help": "also sample the answer without the constitution"})

    def validate(self) -> "GenerateConfig":
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        if self.limit < 0:
            raise ValueError(f"limit must be 0 (all) or more, got {self.limit}")
        self.check_precision()
        self.sampling_config()
        return self


def job_model(store: Store, spec: str = "", quantize: str = "none", precision: str = "auto"):
    """(model, tokenizer) for a job: converted checkpoints go to $CTXDISTILL_MODELS, else the workspace."""
    from .models import default_models_dir, load_model_cached

    models_dir = default_models_dir(store.home)
    return load_model_cached(spec or None, quantize=quantize, precision=precision, models_dir=models_dir)


def never() -> bool:
    return False


def check_start(store: Store, cfg: GenerateConfig) -> None:
    """Refuse, before a job is queued, settings that leave no train prompt to answer."""
    from .safety import quote

    if not select_prompts(
        store, cfg.set_name, search=cfg.search, category=cfg.category, limit=cfg.limit, owner=cfg.owner
    ):
        sets = ", ".join(s["name"] for s in store.prompt_sets(owner=cfg.owner)) or "none"
        raise ValueError(f"prompt set {quote(cfg.set_name)} has no train prompts matching the filters (sets: {sets})")


def run_generate(
    store: Store,
    cfg: GenerateConfig,
    model,
    tokenizer,
    *,
    progress=None,
    should_stop=never,
    log=None,
    job_id: int | None = None,
) -> dict:
    """Answer the selected prompts with and without the constitution; returns a summary.

    Answers already in the store are skipped; each batch is written before the next starts.
    Progress counts tokens, once a second. Raises jobs.Cancelled when `should_stop()` turns true:
    between batches, or inside one after writing its prompts whose answers had all ended."""
    from .jobs import Cancelled

    cfg.validate()
    scfg = cfg.sampling_config()
    constitution = from_row(store.get_constitution(cfg.constitution_id))
    system, examples = render(constitution), constitution.examples
    checks = curate.principle_checks(constitution)
    prompts = select_prompts(
        store, cfg.set_name, search=cfg.search, category=cfg.category, limit=cfg.limit, owner=cfg.owner
    )
    if not prompts:
        raise ValueError(f"prompt set {cfg.set_name!r} has no train prompts matching the filters")
    have = {
        (s["prompt_id"], s["idx"])
        for s in store.list_samples(constitution_id=cfg.constitution_id, set_name=cfg.set_name, owner=cfg.owner)
    }
    todo = [(p, [k for k in range(scfg.n) if (p["id"], k) not in have]) for p in prompts]
    todo = [(p, ks) for p, ks in todo if ks]
    if log and len(todo) < len(prompts):
        log.info("resuming: %d of %d prompts already answered", len(prompts) - len(todo), len(prompts))
    # progress counts tokens (each row's budget: a decode step moves every row of a batch by one)
    budget = lambda ks: (len(ks) + (1 if cfg.unprompted else 0)) * scfg.max_new_tokens
    total = len(prompts) * budget(range(scfg.n))
    done = total - sum(budget(ks) for _, ks in todo)
    meter = Meter(total, "tokens", done)
    if progress:
        progress(done, total, meter.line(done))
    prefixes, started, new_tokens, written = None, time.monotonic(), 0, 0
    for start in range(0, len(todo), cfg.batch_size):
        if should_stop():
            raise Cancelled("cancelled by request")
        batch = todo[start : start + cfg.batch_size]
        rows = [(system, p["text"]) for p, ks in batch for _ in ks]
        # (prompt, k) seeds the random stream: reproducible, batch-independent, and not shared by prompts
        index = [p["id"] * 16 + k for p, ks in batch for k in ks]
        if cfg.unprompted:
            rows += [(None, p["text"]) for p, _ in batch]
            index += [0] * len(batch)
        prefix_ids = split_rows(tokenizer, rows, examples)[0]
        if prefixes is None or prefixes.ids != prefix_ids:
            prefixes = Prefixes(model, prefix_ids)  # once per run, unless a tokenizer merges across it
        end = done + sum(budget(ks) for _, ks in batch)
        on_token = token_progress(done, end, len(rows), meter, progress, should_stop)
        try:
            out = generate_rows(
                model,
                tokenizer,
                rows,
                scfg,
                sample_index=index,
                examples=examples,
                prefixes=prefixes,
                on_token=on_token,
            )
        except Stopped as stop:  # keep the prompts whose answers all ended, then stop
            kept = _finished(batch, stop, cfg.unprompted)
            written += _write(
                store,
                cfg,
                scfg,
                tokenizer,
                checks,
                [batch[i] for i in kept],
                _rows_of(batch, stop.out, kept, cfg.unprompted),
                job_id,
            )
            if log:
                log.info("stopped: kept the %d prompts of the batch whose answers had ended", len(kept))
            raise Cancelled("cancelled by request") from None
        new_tokens += sum(map(len, out))
        written += _write(store, cfg, scfg, tokenizer, checks, batch, out, job_id)
        done = end
        if progress:
            progress(done, total, meter.line(done))
    flags = curate.refresh_flags(store, cfg.constitution_id, owner=cfg.owner)
    elapsed = time.monotonic() - started
    return {
        "prompts": total,
        "answered_now": len(todo),
        "samples_written": written,
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / elapsed, 1) if elapsed else 0.0,
        "flags": flags,
        "constitution_id": cfg.constitution_id,
        "set": cfg.set_name,
    }


class Stopped(Exception):
    """Raised inside a batch's decoding when a stop was asked for: the step and the answers so far."""

    def __init__(self, step: int, out: list[list[int]]):
        self.step, self.out = step, out

    def ended(self) -> set[int]:
        """The rows whose answer had ended (end-of-turn) by then: they are complete."""
        return {r for r, ids in enumerate(self.out) if len(ids) <= self.step}


def token_progress(start: int, end: int, n_rows: int, meter: Meter, progress, should_stop):
    """generate_rows' on_token for one batch of ``n_rows`` rows whose token budget takes the job's
    counter from ``start`` to ``end``: the counter at most once a second, and a stop asked for
    between two of those (raises Stopped)."""

    def on_token(step: int, out: list[list[int]]) -> None:
        now = min(start + (step + 1) * n_rows, end)
        if meter.due(now):
            if should_stop():
                raise Stopped(step, out)
            if progress:
                progress(now, meter.total, meter.line(now))

    return on_token


def _finished(batch, stop: Stopped, unprompted: bool) -> list[int]:
    """Indices of the batch's prompts whose every row had ended when it stopped."""
    ended = stop.ended()
    return [i for i in range(len(batch)) if all(r in ended for r in _row_ids(batch, i, unprompted))]


def _row_ids(batch, i: int, unprompted: bool) -> list[int]:
    """Rows of the batch's prompt i: its samples, then (at the end of the batch) its unprompted answer."""
    first = sum(len(ks) for _, ks in batch[:i])
    n_sampled = sum(len(ks) for _, ks in batch)
    return list(range(first, first + len(batch[i][1]))) + ([n_sampled + i] if unprompted else [])


def _rows_of(batch, out, kept: list[int], unprompted: bool) -> list[list[int]]:
    """The answers of the kept prompts, laid out as a batch of those prompts only."""
    sampled = [out[r] for i in kept for r in _row_ids(batch, i, False)]
    return sampled + ([out[_row_ids(batch, i, True)[-1]] for i in kept] if unprompted else [])


def _write(store: Store, cfg: GenerateConfig, scfg, tokenizer, checks, batch, out, job_id) -> int:
    """Store a batch's answers (one transaction) and flag them; the number of samples written."""
    items, r = [], 0
    plain = out[-len(batch) :] if cfg.unprompted and batch else [[] for _ in batch]
    for (p, ks), unprompted_ids in zip(batch, plain):
        unprompted = tokenizer.decode(unprompted_ids, skip_special_tokens=True).strip()
        for k in ks:
            ids = out[r]
            r += 1
            meta = {
                "job": job_id,
                "max_new_tokens": scfg.max_new_tokens,
                "tokens": len(ids),
                "cut_off": len(ids) >= scfg.max_new_tokens,
                "unprompted_cut_off": len(unprompted_ids) >= scfg.max_new_tokens,
                "sampling": asdict(scfg),
            }
            sample = {
                "prompted": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                "unprompted": unprompted,
                "meta": meta,
            }
            items.append({"prompt_id": p["id"], "constitution_id": cfg.constitution_id, "idx": k, **sample})
    if items:
        curate.flag_samples(store, store.upsert_samples(items), checks)
    return len(items)


def generate_job(ctx, config: dict) -> None:
    """Job kind "generate"."""
    cfg = GenerateConfig.from_dict(config).validate()
    ctx.progress(0, 0, "loading the model")  # the first thing the job says: it may take a while on a busy machine
    model, tokenizer = job_model(ctx.store, cfg.model, cfg.quantize, cfg.precision)
    ctx.set_result(
        run_generate(
            ctx.store,
            cfg,
            model,
            tokenizer,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            log=ctx.log,
            job_id=ctx.job_id,
        )
    )
