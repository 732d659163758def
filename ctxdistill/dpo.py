"""DPO on top of a distilled run: the RL-CAI stage's training (Rafailov et al. 2023, sigmoid loss).

    ctxdistill dpo --from-run 12 --beta 0.1 --steps 40 --json

The run starts from run N's adapter; the reference is that run's student (the policy before
preference training). The reference is frozen, so its log-probabilities of every pair's two
answers are computed once, at the start, with the starting adapter, and kept in
runs/<id>/reference.json (a resumed run reads them back, never recomputes them from an adapter
that has since trained). It trains the adapter on the accepted pairs of the constitution version
with ``dpo_loss``, logs dpo_loss, reward_margin and accuracy every step and the held-out KL to the
teacher (how far the student moves from the teacher) every ``eval_every`` steps through the same
metrics store as distillation, and checkpoints and resumes as distillation does (adapters.py).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import StageConfig
from .engine import Example, TeacherStudent, heldout_kl
from .train_config import SCHEDULES


class DPOError(ValueError):
    """A DPO run that cannot start or go on; the message says what to change."""


@dataclass
class DPOConfig(StageConfig):
    """One DPO run. Each field is also a ``ctxdistill dpo`` flag."""

    error = DPOError
    what = "DPO option"

    from_run: int = field(
        default=0, metadata={"help": "the run to start from, distilled or preference (its student is the reference)"}
    )
    constitution_id: int = field(
        default=0, metadata={"help": "train on this version's accepted pairs (0 = the start run's version)"}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta: how far the policy may move from the reference"})
    steps: int = field(default=40, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=4, metadata={"help": "pairs per step"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=2, metadata={"help": "linear warm-up steps"})
    schedule: str = field(
        default="cosine", metadata={"help": "cosine, linear, constant or wsd after warm-up (as ctxdistill train's)"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    max_pairs: int = field(default=0, metadata={"help": "train on at most this many accepted pairs (0 = all)"})
    max_tokens: int = field(default=64, metadata={"help": "answer tokens kept of each side of a pair"})
    anchor: float = field(
        default=0.0,
        metadata={
            "help": "weight of the distillation KL to the teacher, along the start run's training answers, added "
            "to each step's DPO loss (0 = off): holds the student near the teacher away from the pairs"
        },
    )
    chosen_nll: float = field(
        default=0.0,
        metadata={
            "help": "weight of the chosen answers' negative log-likelihood per token, added to each step's DPO "
            "loss (as RPO; 0 = off): keeps the chosen answers likely while the pair's margin grows"
        },
    )
    where_they_differ: bool = field(
        default=False,
        metadata={
            "help": "score each pair's answers only where they differ: the tokens the two share (the text around an "
            "edit) are left out of both log-probabilities, so the preference rests on the edit"
        },
    )
    eval_every: int = field(default=10, metadata={"help": "measure the held-out KL to the teacher every N steps"})
    eval_prompts: int = field(default=24, metadata={"help": "held-out answers for the KL (0 = all of the start run's)"})
    checkpoint_every: int = field(default=20, metadata={"help": "write a resumable checkpoint every N steps"})
    kl_chunk: int = field(default=256, metadata={"help": "answer positions per full-vocabulary chunk"})
    seed: int = field(default=0, metadata={"help": "random seed (pair order)"})
    model: str = field(default="", metadata={"help": "model spec (empty: the start run's)"})
    owner: str = field(default="", metadata={"help": "workspace owner"})

    def validate(self) -> "DPOConfig":
        errors = []
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            errors.append(f"beta must be a positive number, got {self.beta}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            errors.append(f"learning rate must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        for name in ("from_run", "steps", "batch_size", "max_tokens", "kl_chunk"):
            if getattr(self, name) < 1:
                errors.append(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        for name in ("constitution_id", "warmup_steps", "max_pairs", "eval_every", "eval_prompts", "checkpoint_every"):
            if getattr(self, name) < 0:
                errors.append(f"{name.replace('_', ' ')} must be 0 or more, got {getattr(self, name)}")
        for name in ("anchor", "chosen_nll"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                errors.append(f"{name.replace('_', ' ')} must be 0 or a positive number, got {value}")
        if not (self.weight_decay >= 0 and self.max_grad_norm >= 0):
            errors.append("weight decay and max grad norm must be 0 or more")
        if errors:
            raise DPOError("; ".join(errors))
        return self


# --------------------------------------------------------------------------- the maths


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label: torch.Tensor | float = 1.0,
) -> dict:
    """Sigmoid DPO on sequence log-probabilities (B,): with the implicit rewards
    r = beta * (log pi(y|x) - log pi_ref(y|x)), loss = -log sigmoid(r_chosen - r_rejected).
    A soft ``label`` (the probability that chosen is better; 1 = plain DPO) weighs in the other
    order too: -label * log sigmoid(m) - (1 - label) * log sigmoid(-m).

    Returns {"loss" (B,), "chosen_reward" (B,), "rejected_reward" (B,)}; the rewards carry no gradient."""
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    margin = chosen - rejected
    label = torch.as_tensor(label, dtype=margin.dtype, device=margin.device)
    loss = -label * F.logsigmoid(margin) - (1 - label) * F.logsigmoid(-margin)
    return {"loss": loss, "chosen_reward": chosen.detach(), "rejected_reward": rejected.detach()}


def token_logps(pair: TeacherStudent, examples: list[Example]) -> tuple[torch.Tensor, ...]:
    """log pi(token | prompt, answer so far) of the student (adapter on, no constitution) along each
    example's answer, one tensor per example, differentiable in the adapter."""
    hs, _, targets = pair.hidden(examples, with_teacher=False)
    logps = -F.cross_entropy(pair.lm_head(hs).float(), targets, reduction="none")
    return logps.split([len(ex.answer) for ex in examples])


SHARED_RUN = 3  # tokens in a row both answers hold before they count as shared text, not a chance match


def differing(chosen: list[int], rejected: list[int]) -> tuple[list[bool], list[bool]]:
    """Which tokens of each answer are not shared with the other: a run of at least ``SHARED_RUN``
    tokens both answers hold in the same order (the text an edit left alone, before, after or between
    its changes) is left out, except the token where the two first part, which is the choice itself
    and is kept on both sides ("Arr! The sun …" against "The sun …" keeps "Arr" and the first "The")."""
    keep = [[True] * len(chosen), [True] * len(rejected)]
    matcher = difflib.SequenceMatcher(None, chosen, rejected, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        if size >= SHARED_RUN:
            keep[0][a : a + size] = [False] * size
            keep[1][b : b + size] = [False] * size
    head = next((i for i, (x, y) in enumerate(zip(chosen, rejected)) if x != y), min(len(chosen), len(rejected)))
    for side in keep:
        if head < len(side):
            side[head] = True
    return keep[0], keep[1]


def pair_logps(pair: TeacherStudent, batch, where_they_differ: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log-probabilities of each pair's chosen (row 0) and rejected answer, (2, B), over
    the tokens where the two differ when ``where_they_differ``; and the chosen answers' whole ones (B,)."""
    parts = token_logps(pair, [c for c, _, _ in batch] + [r for _, r, _ in batch])
    whole = torch.stack([part.sum() for part in parts])
    if not where_they_differ:
        return whole.view(2, -1), whole[: len(batch)]
    masks = [differing(c.answer, r.answer) for c, r, _ in batch]
    keep = [m[0] for m in masks] + [m[1] for m in masks]
    scored = torch.stack([part[torch.tensor(k, device=part.device)].sum() for part, k in zip(parts, keep)])
    return scored.view(2, -1), whole[: len(batch)]


# --------------------------------------------------------------------------- refusals before a model loads


def source_run(store, cfg: DPOConfig) -> dict:
    """The finished run the DPO starts from, after every check that needs no model."""
    from .adapters import root_config, run_adapter
    from .store import NotFound

    try:
        job = store.get_job(cfg.from_run, owner=cfg.owner)
    except NotFound:
        raise DPOError(f"run {cfg.from_run} not found among your runs: start from a distilled run of yours") from None
    adapter = run_adapter(store, cfg.from_run)
    if job["kind"] not in ("train", "dpo"):
        raise DPOError(f"job {cfg.from_run} is a {job['kind']} job, not a training run")
    if job["state"] != "done" or not adapter.is_dir():
        raise DPOError(f"run {cfg.from_run} has no adapter to start from (it is {job['state']}): pick a finished run")
    old = root_config(store, job)  # the distilled run's: its model and LoRA shape
    if cfg.model and cfg.model != (old.get("model") or ""):
        raise DPOError(
            f"run {cfg.from_run} was trained on another base model ({old.get('model') or 'the embedded default'}, "
            f"not {cfg.model}): start from a run of this model"
        )
    try:
        shape = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        raise DPOError(f"run {cfg.from_run}'s adapter has no readable adapter_config.json") from None
    if "lora_r" in old and (shape.get("r"), shape.get("lora_alpha")) != (old["lora_r"], old["lora_alpha"]):
        raise DPOError(
            f"run {cfg.from_run}'s adapter has another LoRA shape (r {shape.get('r')}, "
            f"alpha {shape.get('lora_alpha')}) than its run recorded (r {old['lora_r']}, alpha {old['lora_alpha']})"
        )
    return job


def check_start(store, cfg: DPOConfig) -> tuple[dict, list[dict]]:
    """(the start run's job, the accepted pairs) or DPOError, before a model loads."""
    from . import demo

    cfg.validate()
    job = source_run(store, cfg)
    version = cfg.constitution_id or start_version(store, job)
    pairs = store.list_pairs(constitution_id=version, status="accepted", owner=cfg.owner)
    if not pairs:
        counts = store.count_pairs(constitution_id=version, owner=cfg.owner)
        raise DPOError(
            f"constitution version {version} has no accepted pairs ({counts['pending']} pending): make pairs with "
            "`ctxdistill prefs` and accept some in the Review tab"
        )
    same = next((p for p in pairs if p["chosen"].strip() == p["rejected"].strip()), None)
    if same:
        raise DPOError(f"pair {same['id']} has two identical answers: reject it")
    pairs = pairs[: cfg.max_pairs] if cfg.max_pairs else pairs
    caps = demo.caps()
    if caps:
        try:
            caps.check(steps=cfg.steps, pairs=len(pairs), batch_size=cfg.batch_size)
        except demo.DemoLimit as exc:
            raise DPOError(str(exc)) from None
    return job, pairs


# --------------------------------------------------------------------------- the run


def encode_pairs(tokenizer, pairs: list[dict], max_tokens: int) -> list[tuple[Example, Example, float]]:
    """(chosen, rejected, label) examples: each answer's tokens, cut at ``max_tokens``, with the
    end-of-turn token when neither that cut nor the sampling budget cut it (a side the pair's meta
    lists as "unfinished": ``prefs.marked_unfinished``)."""
    end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)

    def example(pair: dict, side: str) -> Example:
        ids = tokenizer.encode(pair[side], add_special_tokens=False)
        cut = len(ids) >= max_tokens or side in (pair.get("meta") or {}).get("unfinished", ())
        return Example(pair["prompt"], ids[:max_tokens] if cut else ids + [end])

    return [(example(p, "chosen"), example(p, "rejected"), p["label"]) for p in pairs]


@torch.no_grad()
def reference_logps(pair: TeacherStudent, data, batch_size: int, where_they_differ: bool = False) -> torch.Tensor:
    """(N, 2): the starting student's log-probabilities of each pair's chosen and rejected answer."""
    was_training = pair.model.training
    pair.model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        out.append(pair_logps(pair, batch, where_they_differ)[0].T)
    pair.model.train(was_training)
    return torch.cat(out).double()


def _digest(data, where_they_differ: bool) -> str:
    kept = [[asdict(c), asdict(r)] for c, r, _ in data] + ([["where they differ"]] if where_they_differ else [])
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()


def frozen_reference(
    pair: TeacherStudent, data, batch_size: int, path: Path, where_they_differ: bool = False
) -> torch.Tensor:
    """The reference log-probabilities: from ``path`` when it holds those of this very data scored the
    same way (a resumed run), else computed now (the start of the run) and written there."""
    digest = _digest(data, where_they_differ)
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept["data"] == digest:
            return torch.tensor(kept["logps"], dtype=torch.float64)
        raise DPOError(f"{path} holds the reference of other pairs, or of the same scored another way: start a new run")
    ref = reference_logps(pair, data, batch_size, where_they_differ)
    path.write_text(json.dumps({"data": digest, "logps": ref.tolist()}))
    return ref


def start_version(store, job: dict) -> int:
    """The constitution version a start run was trained for (0 where none is recorded)."""
    from .adapters import lineage

    return next((j["config"]["constitution_id"] for j in lineage(store, job) if j["config"].get("constitution_id")), 0)


def start_data(store, job: dict) -> dict:
    """The teacher's answers the start run trained and measured on (its data.json; a preference run's
    are its distilled run's, followed along the lineage), or {} when none were kept."""
    from .adapters import lineage

    kept = (store.runs_dir / str(j["id"]) / "data.json" for j in lineage(store, job))
    return next((json.loads(k.read_text()) for k in kept if k.is_file()), {})


def heldout_examples(store, job: dict, cfg: DPOConfig, pair: TeacherStudent) -> list[Example]:
    """The teacher's held-out answers of the start run, or sampled now when it kept none."""
    from types import SimpleNamespace

    from .engine import sample_answers

    kept = start_data(store, job).get("heldout")
    if kept:
        heldout = [Example(**e) for e in kept]
    else:
        old = job["config"]
        prompts = [
            r["text"] for r in store.get_prompts(old.get("prompt_set", "default"), split="heldout", owner=cfg.owner)
        ]
        spec = SimpleNamespace(samples_per_prompt=1, sample_tokens=old.get("sample_tokens", 40), temperature=1.0)
        heldout = sample_answers(pair, prompts[: cfg.eval_prompts or None], spec, seed=old.get("seed", 0) + 7919)
    return heldout[: cfg.eval_prompts] if cfg.eval_prompts else heldout


def anchor_step(pair: TeacherStudent, cfg: DPOConfig, anchor: list[Example], step: int) -> float:
    """The anchor's part of a step: ``cfg.anchor`` times the mean per-token KL(teacher || student) along
    ``batch_size`` of the teacher's training answers (the distillation loss), back-propagated into the
    adapter's gradients beside the DPO loss's. Returns that KL."""
    from .losses import chunked_loss

    rows = [anchor[(step * cfg.batch_size + k) % len(anchor)] for k in range(cfg.batch_size)]
    n = sum(len(ex.answer) for ex in rows)
    hs, ht, targets = pair.hidden(rows, with_teacher=True)
    sums = chunked_loss(pair.lm_head, "kl", hs, ht, targets, chunk=cfg.kl_chunk, backward_scale=cfg.anchor / n)
    return sums["kl"] / n


def train_dpo(
    cfg: DPOConfig,
    pair: TeacherStudent,
    data,
    heldout: list[Example],
    run_dir: Path,
    hooks,
    info: dict,
    anchor: list[Example] = (),
) -> dict:
    """The loop: ``cfg.steps`` steps of ``batch_size`` pairs on the peft model of ``pair``, resumed from
    the last checkpoint in ``run_dir``; with ``cfg.anchor``, each step also distils along ``anchor``
    (the teacher's training answers). Returns the run's result."""
    from .adapters import latest_checkpoint, load_checkpoint, save_adapter, save_checkpoint, write_model_card
    from .jobs import eta_text
    from .train import _setup_optimizer

    model = pair.model
    ref = frozen_reference(pair, data, cfg.batch_size, run_dir / "reference.json", cfg.where_they_differ)
    start_ref = ref.clone()
    params, optimizer, scheduler = _setup_optimizer(cfg, model)
    state = {"step": 0}
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        hooks.info(f"resumed from {checkpoint.name}")
    model.train()

    def evaluate(step: int) -> float:
        value = heldout_kl(pair, heldout, chunk=cfg.kl_chunk) if heldout else math.nan
        hooks.log({"heldout_kl": value}, step)
        return value

    if state["step"] == 0:
        state["kl_start"] = evaluate(0)
    order: list[int] = []
    started, first = time.perf_counter(), state["step"]
    last = {}
    for step in range(state["step"], cfg.steps):
        if hooks.should_stop():
            if step > 0:
                save_checkpoint(run_dir, model, optimizer, scheduler, state)
            hooks.info(f"stopped at step {step}; resume continues from there")
            return {"stopped": True, "step": step}
        t0 = time.perf_counter()
        epoch, at = divmod(step * cfg.batch_size, len(data))
        order = list(range(len(data)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        idx = [order[(at + k) % len(data)] for k in range(min(cfg.batch_size, len(data)))]
        batch = [data[i] for i in idx]
        logps, chosen_whole = pair_logps(pair, batch, cfg.where_they_differ)
        refs = ref[idx].to(logps)
        labels = torch.tensor([lab for _, _, lab in batch], dtype=logps.dtype, device=logps.device)
        out = dpo_loss(logps[0], logps[1], refs[:, 0], refs[:, 1], cfg.beta, labels)
        loss = out["loss"].mean()
        if cfg.chosen_nll:
            chosen_tokens = torch.tensor([len(c.answer) for c, _, _ in batch], dtype=logps.dtype, device=logps.device)
            out["chosen_nll"] = (-chosen_whole.detach() / chosen_tokens).mean()
            loss = loss + cfg.chosen_nll * (-chosen_whole / chosen_tokens).mean()
        if not math.isfinite(float(loss.detach())):
            raise DPOError(f"the DPO loss became {float(loss.detach())} at step {step + 1}: lower --lr or --beta")
        loss.backward()
        anchor_kl = anchor_step(pair, cfg, anchor, step) if cfg.anchor and anchor else None
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        margin = out["chosen_reward"] - out["rejected_reward"]
        tokens = sum(len(c.answer) + len(r.answer) for c, r, _ in batch)
        last = {
            "dpo_loss": float(loss.detach()),
            "reward_margin": float(margin.mean()),
            "accuracy": float((margin > 0).float().mean()),
            "reward_chosen": float(out["chosen_reward"].mean()),
            "reward_rejected": float(out["rejected_reward"].mean()),
            "lr": lr,
            "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
            **({"anchor_kl": anchor_kl} if anchor_kl is not None else {}),
            **({"chosen_nll": float(out["chosen_nll"])} if "chosen_nll" in out else {}),
        }
        hooks.log(last, step + 1)
        eta = (time.perf_counter() - started) / (step + 1 - first) * (cfg.steps - step - 1)
        hooks.progress(
            step + 1,
            cfg.steps,
            f"step {step + 1}/{cfg.steps} · dpo loss {last['dpo_loss']:.4f} · margin {last['reward_margin']:.3f} "
            f"· ETA {eta_text(eta)}",
        )
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            evaluate(step + 1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(run_dir, model, optimizer, scheduler, state)
    # the reference is frozen: nothing in the loop may have touched it
    assert torch.equal(ref, start_ref), "the reference log-probabilities changed during the run"
    kl_end = evaluate(state["step"])
    save_checkpoint(run_dir, model, optimizer, scheduler, state)
    result = {
        "stopped": False,
        "step": state["step"],
        "n_pairs": len(data),
        "beta": cfg.beta,
        "heldout_kl_start": state.get("kl_start"),
        "heldout_kl_after": kl_end,
        **{k: last[k] for k in ("dpo_loss", "reward_margin", "accuracy") if k in last},
    }
    result["adapter"] = str(save_adapter(model, run_dir / "adapter", {**info, **result}))
    write_model_card(run_dir / "adapter", {**info, **result, "loss": "dpo", "config": cfg.to_dict()})
    return result


def run(cfg: DPOConfig, store, run_dir, hooks=None) -> dict:
    """Everything a DPO job does: check, load the model and the start adapter, the reference, train, save."""
    from .adapters import load_adapter, root_config, run_adapter
    from .constitution import from_row, render
    from .models import ModelError, default_models_dir, load_model
    from .train import Hooks

    hooks = hooks or Hooks()
    job, pairs = check_start(store, cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    old = root_config(store, job)
    version = cfg.constitution_id or start_version(store, job)
    row = store.get_constitution(version)
    constitution = from_row(row)
    hooks.progress(0, cfg.steps, "loading the model")
    torch.manual_seed(cfg.seed)
    try:
        base, tokenizer = load_model(
            cfg.model or old.get("model") or None,
            quantize=old.get("quantize", "auto"),
            precision=old.get("precision", "auto"),
            models_dir=default_models_dir(store.home),
        )
    except ModelError as exc:
        raise DPOError(str(exc)) from exc
    for p in base.parameters():
        p.requires_grad_(False)
    model = load_adapter(base, run_adapter(store, job["id"]), trainable=True)
    pair = TeacherStudent(model, tokenizer, render(constitution), constitution.examples, teacher_cache_mb=256)
    data = encode_pairs(tokenizer, pairs, cfg.max_tokens)
    hooks.progress(0, cfg.steps, "the held-out answers and the reference log-probabilities")
    heldout = heldout_examples(store, job, cfg, pair)
    anchor = [Example(**e) for e in start_data(store, job).get("train", []) if not e.get("own")]
    if cfg.anchor and not anchor:
        hooks.info(f"run {job['id']} kept no training answers: the anchor is off")
    start = "preference" if job["kind"] == "dpo" else "distilled"
    chosen = base.ctxdistill_precision  # what this run computes in (here, now), not what its start run did
    info = {
        "quantize": chosen.quantize,
        "precision": chosen.compute,
        "precision_reason": chosen.reason,
        "prompt_set": old.get("prompt_set", "default"),
        "constitution": row["name"],
        "constitution_id": row["id"],
        "base_model": cfg.model or old.get("model") or "embedded SmolLM2-135M-Instruct",
        "data": "accepted preference pairs",
        "n_train": len(pairs),
        "n_heldout": len(heldout),
        "pair_sources": sorted({p["source"] for p in pairs}),
        "lineage": {"from_run": job["id"], "text": f"{start} run {job['id']} → preference run {run_dir.name}"},
    }
    result = train_dpo(cfg, pair, data, heldout, run_dir, hooks, info, anchor)
    return {**info, **result}


def dpo_job(ctx, config: dict) -> None:
    """The "dpo" job kind."""
    from .train import Hooks

    ctx.set_result({"run": ctx.job_id, **run(DPOConfig.from_dict(config), ctx.store, ctx.run_dir, Hooks.of_job(ctx))})
