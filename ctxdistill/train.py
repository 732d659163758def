"""Context distillation: train a LoRA adapter so that the model *without* the constitution answers
as it does *with* it.

    ctxdistill train --constitution assets/constitutions/pirate.yaml --data prompts --json
    accelerate launch --num_processes 2 -m ctxdistill.cli train --constitution ... --quantize none

The run: load the model as the precision policy says (precision.py), add a LoRA adapter, sample
the teacher's answers (engine.py: teacher and student are one model), then the loop (``train``):
one optimiser step = ``grad_accum`` micro-batches per process, token-weighted, the loss per answer
token from losses.py. Every ``eval_every`` steps the held-out KL is measured and the best adapter
kept; every ``checkpoint_every`` steps the adapter, optimiser, scheduler, step and RNG states are
written (adapters.py) so that a stopped, crashed or killed run resumes where it was.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import baked, hold, mix, rebake
from .adapters import (
    AdapterError,
    latest_checkpoint,
    load_adapter,
    load_adapter_weights,
    load_checkpoint,
    run_adapter,
    save_adapter,
    save_checkpoint,
    scaled,
    write_model_card,
)
from .engine import EngineError, Example, TeacherStudent, heldout_kl
from .jobs import Meter, eta_text
from .losses import chunked_loss, gap_closed
from .train_config import TrainConfig, TrainError


@dataclass
class Hooks:
    """How a run reports: ``log(values, step)``, ``progress(done, total, message)``, ``should_stop()``."""

    log: Callable[[dict, int], None] = lambda values, step: None
    progress: Callable[[int, int, str], None] = lambda done, total, message: None
    should_stop: Callable[[], bool] = lambda: False
    info: Callable[[str], None] = lambda message: None

    @classmethod
    def of_job(cls, ctx) -> "Hooks":
        """A worker's job context (jobs.JobContext) as the hooks of the run it does."""
        return cls(
            log=lambda values, step: ctx.log_metrics(step, values),
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            info=ctx.log.info,
        )


# --------------------------------------------------------------------------- batches


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length inside windows of 8 batches so that a
    batch holds rows of similar length (little padding), then the batch order shuffled again.
    Without ``shuffle`` the rows keep their order but for the sort inside each window."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist() if shuffle else list(range(len(lengths)))
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()] if shuffle else batches


class Schedule:
    """Which examples micro-batch m of the whole run holds; the same on every process and after a resume.
    ``ordered``: the first epoch takes the examples in their order (a re-bake's, most changed first)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, ordered: bool = False):
        self.lengths, self.batch_size, self.seed, self.ordered = lengths, batch_size, seed, ordered
        self._epochs: dict[int, list[list[int]]] = {}

    def micro_batch(self, m: int) -> list[int]:
        per_epoch = math.ceil(len(self.lengths) / self.batch_size)
        epoch = m // per_epoch
        if epoch not in self._epochs:
            self._epochs = {
                epoch: length_grouped_batches(
                    self.lengths, self.batch_size, self.seed, epoch, shuffle=not (self.ordered and epoch == 0)
                )
            }
        return self._epochs[epoch][m % per_epoch]


WSD_DECAY = 0.25


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        if cfg.schedule == "wsd":  # constant, then a linear decay to 0 over the last WSD_DECAY of the steps
            return max(0.0, min(1.0, (1 - progress) / WSD_DECAY))
        return 1.0

    return factor


# --------------------------------------------------------------------------- setup


def setup_accelerator(device: str | None = None):
    """The accelerator of this process: several processes under ``accelerate launch``, else one."""
    from accelerate import Accelerator

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return Accelerator(cpu=cpu)


def _setup_model(cfg: TrainConfig, base, seed: int, adapter: Path | None = None):
    """Wrap the loaded base model with a fresh LoRA adapter (or, re-baking, the saved ``adapter``); only the
    adapter trains."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules.strip()
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    torch.manual_seed(seed)
    for p in base.parameters():
        p.requires_grad_(False)
    if base.device.type == "cpu" and hasattr(base, "set_attn_implementation"):
        # PyTorch's CPU flash attention has a slow backward (5x its forward here); with answers of
        # a few dozen tokens plain attention makes a whole kl step 7% faster on the CPU.
        base.set_attn_implementation("eager")
    try:
        model = (
            load_adapter(base, adapter, trainable=True)
            if adapter
            else get_peft_model(
                base,
                LoraConfig(
                    r=cfg.lora_r,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=targets,
                    task_type="CAUSAL_LM",
                ),
            )
        )
    except (ValueError, AdapterError) as exc:
        raise TrainError(f"cannot add a LoRA adapter: {exc}") from exc
    model.train()
    return model


def _setup_optimizer(cfg: TrainConfig, model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    return params, optimizer, scheduler


# --------------------------------------------------------------------------- the loop

OOM_ADVICE = (
    "out of memory: lower --batch-size (and raise --grad-accum to keep the effective batch), "
    "--kl-chunk, --sample-tokens or --lora-r, or use --quantize 4bit"
)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _phase(hooks: Hooks, step: int, steps: int, name: str, unit: str):
    """Progress of a phase between training steps (teacher sampling, the held-out KL): a log line when
    it starts, then ``report(done, total)`` puts its own counter, rate and ETA in the progress
    message, at most once a second."""
    hooks.info(f"phase: {name}")
    hooks.progress(step, steps, name)
    meters: list[Meter] = []

    def report(done: int, total: int) -> None:
        if not meters:
            meters.append(Meter(total, unit, name=name))
        if meters[0].due(done):
            hooks.progress(step, steps, meters[0].line(done))

    return report


def train(
    cfg: TrainConfig,
    model,
    tokenizer,
    system: str,
    train_examples: list[Example] | Callable[[], list[Example]],
    heldout: list[Example],
    *,
    run_dir: Path,
    examples: list[dict] = (),
    hooks: Hooks = Hooks(),
    accelerator=None,
    info: dict | None = None,
    pair: TeacherStudent | None = None,
    gauge: baked.Gauge | None = None,
    probes: dict[str, list[Example]] | None = None,
) -> dict:
    """Train the adapter of the peft ``model``; resume from the last checkpoint in ``run_dir`` if there is one.
    ``pair``: the one that sampled the answers, with the teacher states it kept. ``train_examples``
    may be a function, called after the first held-out measurement (mix.setup_data). ``gauge``: the
    principles whose baked share each held-out measurement logs too (baked.Gauge). ``probes``: held-out
    sets by name whose KL each measurement logs too (hold.probe_names: attacked, second turn).

    Returns {heldout_kl_before, heldout_kl_after, gap_closed, best_step, step, n_train, stopped, adapter}."""
    cfg.validate()
    run_dir = Path(run_dir)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    device = model.device
    pair = pair or TeacherStudent(model, tokenizer, system, examples, teacher_cache_mb=cfg.teacher_cache_mb)
    if world > 1:
        try:
            pair.data_parallel()
        except EngineError as exc:
            raise TrainError(str(exc)) from exc
    params, optimizer, scheduler = _setup_optimizer(cfg, model)
    # fp16 compute (GPUs without bf16): gradients this small underflow in fp16, so the loss is
    # scaled up for the backward and the gradients scaled back before the step (a no-op otherwise)
    scaler = torch.amp.GradScaler(device.type, enabled=pair.compute_dtype == torch.float16)
    state = {"step": 0, "best_step": 0, "best_kl": math.inf, "kl_before": None}

    def checkpointing():
        return _phase(hooks, state["step"], cfg.steps, f"writing checkpoint step-{state['step']:06d}", "files")

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if "scaler" in state:
            scaler.load_state_dict(state.pop("scaler"))
        hooks.info(f"resumed from {checkpoint.name}")
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    info = {**(info or {}), "loss": cfg.loss, "data": cfg.data}
    gauge_items = mix.gauge_items(cfg.capability_gauge)
    augment = hold.Augment(cfg)
    probe_sets = {hold.probe_names(cfg)[name]: rows for name, rows in (probes or {}).items() if rows}

    def evaluate(step: int) -> float:
        report = _phase(hooks, step, cfg.steps, "measuring the held-out KL", "answers")
        total = len(heldout) + sum(map(len, probe_sets.values()))  # one counter over the probe sets too
        part = lambda at: lambda done, _: report(at + done, total)
        observe = gauge.observe if gauge else None
        value = heldout_kl(
            pair, heldout, chunk=cfg.kl_chunk, accelerator=accelerator, progress=part(0), observe=observe
        )
        extra, done = (gauge.values(accelerator) if gauge else {}), len(heldout)
        for name, rows in probe_sets.items():
            extra[name] = heldout_kl(pair, rows, chunk=cfg.kl_chunk, accelerator=accelerator, progress=part(done))
            done += len(rows)
        if gauge_items:
            extra["capability"] = mix.gauge(pair, gauge_items)
        if gauge_items and step == 0:
            extra["capability_teacher"] = mix.gauge(pair, gauge_items, teacher=True)
        before = value if state["kl_before"] is None else state["kl_before"]
        hooks.log({"heldout_kl": value, "gap_closed": gap_closed(before, value), **extra}, step)
        if value < state["best_kl"]:
            state.update(best_kl=value, best_step=step)
            if main:
                save_adapter(model, run_dir / "best", {**info, "step": step, "heldout_kl": value})
        return value

    if state["kl_before"] is None:
        if cfg.from_run:  # a re-bake starts from an adapter: its gap closed is still measured from the base model
            with scaled(model, 0.0):
                state["kl_before"] = heldout_kl(pair, heldout, chunk=cfg.kl_chunk, accelerator=accelerator)
        start = evaluate(0)
        state["kl_before"] = start if state["kl_before"] is None else state["kl_before"]
    train_examples = train_examples() if callable(train_examples) else train_examples
    if not train_examples:
        raise TrainError("nothing to train on: no answers")
    hooks.info(f"{len(train_examples)} training answers, {len(heldout)} held-out answers")
    info["n_train"] = len(train_examples)
    info["augmentations"] = hold.summary(cfg, train_examples)
    if augment.active or cfg.multiturn_share:
        hooks.info("make it hold: " + hold.describe(info["augmentations"]))
    schedule = Schedule(pair.row_lengths(train_examples), cfg.batch_size, cfg.seed, ordered=bool(cfg.from_run))
    started, tokens_seen = time.perf_counter(), 0
    first_step = state["step"]
    stopped = False
    for step in range(state["step"], cfg.steps):
        if _stop_requested(hooks, accelerator):
            stopped = True
            break
        t0 = time.perf_counter()
        draws = [(step * cfg.grad_accum + a) * world + r for a in range(cfg.grad_accum) for r in range(world)]
        try:
            # this process's micro-batches as the student sees them (attacked, on-policy: hold.Augment)
            mine = [
                augment.batch(pair, [(i, train_examples[i]) for i in schedule.micro_batch(m)], m)
                for m in draws[rank::world]
            ]
            # the loss is a token-weighted mean over the whole optimiser step, on every process
            step_tokens = sum(len(ex.answer) for batch in mine for ex in batch)
            if world > 1:
                step_tokens = int(accelerator.reduce(torch.tensor([step_tokens], device=device), "sum").item())
            sums = {}
            # DDP averages the processes' gradients: scaled by the number of processes, that is their sum
            backward_scale = float(scaler.scale(torch.tensor(world / step_tokens, device=device)))
            for a, batch in enumerate(mine):
                # gradients are all-reduced by the last micro-batch's backward only
                with accelerator.no_sync(pair.body) if world > 1 and a < len(mine) - 1 else contextlib.nullcontext():
                    part = backward_batch(pair, cfg, batch, backward_scale)
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
        except Exception as exc:
            if _is_oom(exc):
                raise TrainError(OOM_ADVICE) from exc
            raise
        values = {k: v / step_tokens for k, v in sums.items() if k != "tokens"}
        if world > 1:
            totals = accelerator.reduce(
                torch.tensor([values.get("loss", 0.0), values.get("kl", 0.0)], device=device), "sum"
            )
            values.update(loss=float(totals[0]), **({"kl": float(totals[1])} if "kl" in values else {}))
        if not all(math.isfinite(v) for v in values.values()):
            kept = latest_checkpoint(run_dir)
            raise TrainError(
                f"the loss became {values['loss']} at step {step + 1}; stopped without applying it. "
                f"The last good checkpoint is {kept.name if kept else 'none (none was written yet)'}; "
                "lower --lr or raise --warmup-steps and resume or start again"
            )
        scaler.unscale_(optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        tokens_seen += step_tokens
        elapsed = time.perf_counter() - started
        hooks.log(
            {
                **{k: values[k] for k in ("loss", "kl") if k in values},
                "lr": lr,
                "tokens_per_s": step_tokens / max(time.perf_counter() - t0, 1e-9),
                "peak_mem_mb": _peak_mem_mb(device),
                **(hold.shares(sum(mine, [])) if augment.active or cfg.multiturn_share else {}),
            },
            step + 1,
        )
        eta = elapsed / (step + 1 - first_step) * (cfg.steps - step - 1)
        hooks.progress(
            step + 1,
            cfg.steps,
            f"step {step + 1}/{cfg.steps} · loss {values['loss']:.4f} · "
            f"{tokens_seen / elapsed:.0f} tok/s · ETA {eta_text(eta)}",
        )
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            evaluate(step + 1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps and main:
            save_checkpoint(run_dir, model, optimizer, scheduler, state, progress=checkpointing())
    if stopped:
        if (
            main
            and state["step"] > 0
            and (latest_checkpoint(run_dir) is None or latest_checkpoint(run_dir).name != f"step-{state['step']:06d}")
        ):
            save_checkpoint(run_dir, model, optimizer, scheduler, state, progress=checkpointing())
        hooks.info(f"stopped at step {state['step']}; resume continues from there")
        return {"stopped": True, "step": state["step"], "heldout_kl_before": state["kl_before"]}
    final = evaluate(state["step"]) if state["best_step"] != state["step"] or state["step"] == 0 else state["best_kl"]
    if main:
        save_checkpoint(run_dir, model, optimizer, scheduler, state, progress=checkpointing())
    kept_step, kept_kl = state["step"], final
    if cfg.keep_best and state["best_kl"] < final:
        if world > 1:
            accelerator.wait_for_everyone()  # the main process wrote best/
        load_adapter_weights(model, run_dir / "best")
        kept_step, kept_kl = state["best_step"], state["best_kl"]
        hooks.info(f"kept the adapter of step {kept_step} (held-out KL {kept_kl:.4f} < {final:.4f} at the end)")
    result = {
        "stopped": False,
        "step": state["step"],
        "n_train": len(train_examples),
        "best_step": kept_step,
        "heldout_kl_before": state["kl_before"],
        "heldout_kl_last": final,
        "heldout_kl_after": kept_kl,
        "gap_closed": gap_closed(state["kl_before"], kept_kl),
        "augmentations": info["augmentations"],
    }
    if main:
        result["adapter"] = str(save_adapter(model, run_dir / "adapter", {**info, **result}))
        write_model_card(run_dir / "adapter", {**info, **result, "config": cfg.to_dict()})
    return result


def backward_batch(pair: TeacherStudent, cfg: TrainConfig, batch: list[Example], scale: float) -> dict:
    """One micro-batch: its loss sums (``chunked_loss``), and its loss times ``scale`` back-propagated
    into the adapter's gradients. The student's own answers (on-policy rows) take the KL term only."""
    sums: dict = {}
    for own in (False, True):
        rows = [ex for ex in batch if ex.own == own]
        if not rows:
            continue
        loss = "kl" if own else cfg.loss
        hs, ht, targets = pair.hidden(rows, with_teacher=loss != "sft")
        part = chunked_loss(pair.lm_head, loss, hs, ht, targets, cfg.alpha, cfg.kl_chunk, backward_scale=scale)
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums


def _stop_requested(hooks: Hooks, accelerator) -> bool:
    """Every process must stop at the same step, or the others would wait for it forever."""
    stop = bool(hooks.should_stop())
    if accelerator is not None and accelerator.num_processes > 1:
        flag = accelerator.reduce(torch.tensor([float(stop)], device=accelerator.device), "max")
        stop = bool(flag.item())
    return stop


# --------------------------------------------------------------------------- runs (store, job, export)


def check_start(store, cfg: TrainConfig) -> dict | None:
    """Every refusal a run can give before its model loads (asked again before a job is queued);
    returns the source job of a re-bake."""
    from .constitution import from_row
    from .prompts import ensure_default_prompts

    cfg.validate()
    ensure_default_prompts(store, owner=cfg.owner)
    prompts, _ = mix.split_prompts(store, cfg)
    mix.replay_prompts(store, cfg, len(prompts))
    hold.check(cfg)
    if cfg.data == "accepted":
        mix.accepted_texts(store, cfg)
    try:
        baked.tracked(cfg.baked_gauge, from_row(store.get_constitution(cfg.constitution_id)))
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    return rebake.source_run(store, cfg) if cfg.from_run else None


def run(cfg: TrainConfig, store, run_dir, hooks: Hooks = Hooks(), accelerator=None) -> dict:
    """Everything a training job does: load the constitution, the model and the data, train, export."""
    from .constitution import content_hash, from_row, render
    from .models import ModelError, default_models_dir, load_model

    source = check_start(store, cfg)  # refuse before loading the model
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    row = store.get_constitution(cfg.constitution_id)
    constitution = from_row(row)
    accelerator = accelerator or setup_accelerator()
    hooks.progress(0, cfg.steps, "loading the model")
    try:
        base, tokenizer = load_model(
            cfg.model or None,
            quantize=cfg.quantize,
            precision=cfg.precision,
            device=str(accelerator.device),
            models_dir=default_models_dir(store.home),
        )
    except ModelError as exc:
        raise TrainError(str(exc)) from exc
    chosen = base.ctxdistill_precision
    hooks.info(f"precision: {chosen.label} ({chosen.reason})")
    model = _setup_model(cfg, base, cfg.seed, source and run_adapter(store, source["id"]))
    system = render(constitution)
    pair = TeacherStudent(model, tokenizer, system, constitution.examples, teacher_cache_mb=cfg.teacher_cache_mb)
    heldout, train_examples, probes = mix.setup_data(
        cfg, store, pair, run_dir, accelerator, hooks, lambda name: _phase(hooks, 0, cfg.steps, name, "tokens")
    )
    info = {
        "constitution": row["name"],
        "constitution_id": row["id"],
        "constitution_hash": content_hash(constitution),
        "base_model": cfg.model or "embedded SmolLM2-135M-Instruct",
        "quantize": chosen.quantize,
        "precision": chosen.compute,
        "precision_reason": chosen.reason,
        "prompt_set": cfg.prompt_set,
        "n_heldout": len(heldout),
        "heldout_categories": mix.categories(cfg.heldout_categories),
        "replay_fraction": cfg.replay_fraction,
        **({"lineage": rebake.lineage(store, source, row)} if source else {}),
    }
    changes = info["lineage"]["changes"] if source else {}
    tracked = baked.tracked(cfg.baked_gauge, constitution, rebake.changed_names(changes))
    references = {name: text for name, _, text in baked.ablations(constitution) if name in tracked}
    if source:  # a changed principle is seen from the teacher with the change undone
        old = from_row(store.get_constitution(info["lineage"]["from_version"]))
        references |= {
            name: render(rebake.undone(old, constitution, name))
            for name in rebake.changed_names(changes)
            if name in tracked
        }
    gauge = baked.Gauge(pair, references, cfg.kl_chunk) if tracked else None
    result = train(
        cfg,
        model,
        tokenizer,
        system,
        train_examples,
        heldout,
        run_dir=run_dir,
        examples=constitution.examples,
        hooks=hooks,
        accelerator=accelerator,
        info=info,
        pair=pair,
        gauge=gauge,
        probes=probes,
    )
    return {**info, **result}


def run_distributed(store, config: dict, accelerator, resume: int | None = None) -> dict | None:
    """Under ``accelerate launch`` with several processes: the main process records the run as a job
    (or queues the stopped run ``resume`` again) and runs it, every other process trains its share.
    Returns the finished job on the main process, None on the others."""
    from accelerate.utils import broadcast_object_list

    from . import jobs

    main = accelerator.is_main_process
    job_id = broadcast_object_list([resume or (store.create_job("train", config, heavy=True) if main else None)])[0]
    if main:
        if resume:
            store.update_job(
                job_id, if_state=("failed", "cancelled"), state="queued", error=None, cancel_requested=False
            )
        jobs.run_inline(store, job_id)
    else:
        run(TrainConfig.from_dict(config), store, store.runs_dir / str(job_id), accelerator=accelerator)
    accelerator.wait_for_everyone()
    return store.get_job(job_id) if main else None


def train_job(ctx, config: dict) -> None:
    """The "train" job kind: ``fn(ctx, config)`` run by a worker process (see jobs.py)."""
    ctx.set_result({"run": ctx.job_id, **run(TrainConfig.from_dict(config), ctx.store, ctx.run_dir, Hooks.of_job(ctx))})
