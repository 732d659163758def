"""Context distillation: train a LoRA adapter so that the model *without* the constitution answers
as it does *with* it.

    ctxdistill train --constitution assets/constitutions/pirate.yaml --data prompts --json
    accelerate launch --num_processes 2 -m ctxdistill.cli train --constitution ... --quantize none

Teacher and student are one model in memory: the teacher is the base weights (adapter disabled)
with the constitution as system prompt, the student is base + adapter with the template's default
system prompt. The teacher is frozen, so the key/value cache of its constitution prefix is
computed once per run and reused by every step and every held-out evaluation.

Losses, per answer token (``token_losses``): ``kl`` = forward KL(teacher || student) over the
whole vocabulary, ``sft`` = cross-entropy on the answer text, ``mix`` = a*CE + (1-a)*KL. The
full-vocabulary logits are only ever built ``kl_chunk`` positions at a time (``chunked_loss``).

The loop (``train``) is flat: one optimiser step = ``grad_accum`` micro-batches per process,
token-weighted, gradients all-reduced across processes (accelerate; gloo on CPU). Every
``eval_every`` steps the held-out KL is measured and the best adapter kept; every
``checkpoint_every`` steps the adapter, optimiser, scheduler, step and RNG states are written so
that a stopped, crashed or killed run resumes where it was.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .config import StageConfig
from .precision import PRECISIONS, QUANTIZE
from .generate import (Prefixes, SamplingConfig, decoder_of, generate_rows, kl_per_token, left_padded, split_rows,
                       suffix_inputs)

LOSSES = ("kl", "sft", "mix")
DATA_SOURCES = ("prompts", "accepted")
SCHEDULES = ("cosine", "linear", "constant")
RUN_FILE = "ctxdistill_run.json"      # written next to every saved adapter: what it was trained on
EVAL_FILE = "ctxdistill_eval.json"    # written into a run's adapter by evaluate.py: its latest figures


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what to change."""


class AdapterError(TrainError):
    """An adapter that cannot be used with this model (corrupt files, another base model)."""


@dataclass
class TrainConfig(StageConfig):
    """One distillation run. Each field is also a ``ctxdistill train`` flag."""
    error = TrainError
    what = "training option"

    constitution_id: int = field(default=0, metadata={"help": "constitution version id in the workspace (the CLI fills it from --constitution)"})
    loss: str = field(default="kl", metadata={"help": "kl (match the teacher's whole next-token distribution), sft (cross-entropy on the texts) or mix"})
    alpha: float = field(default=0.5, metadata={"help": "mix only: weight of the cross-entropy term (the KL term gets 1-alpha)"})
    data: str = field(default="prompts", metadata={"help": "prompts (fresh teacher samples of the prompt set's train split) or accepted (curated samples' final texts)"})
    prompt_set: str = field(default="default", metadata={"help": "prompt set: train prompts for --data prompts, held-out prompts for evaluation"})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many train prompts or samples (0 = all)"})
    samples_per_prompt: int = field(default=1, metadata={"help": "teacher samples per train prompt (--data prompts)"})
    sample_tokens: int = field(default=40, metadata={"help": "tokens per teacher sample (train and held-out)"})
    temperature: float = field(default=1.0, metadata={"help": "teacher sampling temperature (1 = the teacher's own distribution)"})
    steps: int = field(default=80, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "answers per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=4, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate decay after warm-up: cosine, linear or constant"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: str = field(default="all-linear", metadata={"help": "comma-separated module names to adapt, or all-linear"})
    quantize: str = field(default="auto", metadata={"help": "auto (the precision policy: 4-bit NF4 where the device computes bf16 or fp16 natively, full weights on other CPUs), 4bit or none (16/32-bit LoRA)"})
    precision: str = field(default="auto", metadata={"help": "compute dtype: auto (the precision policy: bf16 where native, fp16 on GPUs without bf16, else fp32), bf16, fp16 or fp32"})
    eval_every: int = field(default=10, metadata={"help": "measure held-out KL every N steps (0 = only at the start and the end)"})
    eval_prompts: int = field(default=24, metadata={"help": "held-out prompts used for evaluation (0 = all)"})
    keep_best: bool = field(default=True, metadata={"help": "end with the adapter of the step with the lowest held-out KL"})
    checkpoint_every: int = field(default=20, metadata={"help": "write a resumable checkpoint every N steps (0 = only when stopped)"})
    kl_chunk: int = field(default=256, metadata={"help": "answer positions per full-vocabulary chunk (bounds the memory of the logits)"})
    teacher_cache_mb: int = field(default=512, metadata={"help": "memory for the teacher's final hidden states along each answer, kept from the sampling pass that wrote it (or its first computation) and reused by every step and evaluation (0 = recompute every step)"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, sampling, adapter init)"})
    model: str = field(default="", metadata={"help": "model spec (empty: the workspace default)"})
    owner: str = field(default="", metadata={"help": "workspace owner"})

    def validate(self) -> "TrainConfig":
        errors = []
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.data not in DATA_SOURCES:
            errors.append(f"data must be one of {', '.join(DATA_SOURCES)}, not {self.data!r}")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.quantize not in QUANTIZE:
            errors.append(f"quantize must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 0 <= self.alpha <= 1:
            errors.append(f"alpha must be between 0 and 1, got {self.alpha}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"learning rate must be a positive number, got {self.lr}")
        try:  # the teacher's sampling settings, checked as the sampling stage checks them
            SamplingConfig(max_new_tokens=self.sample_tokens, temperature=self.temperature).validate()
        except ValueError as exc:
            errors.append(f"teacher sampling: {exc}")
        for name in ("weight_decay", "max_grad_norm"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                errors.append(f"{name.replace('_', ' ')} must be a number of 0 or more, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            errors.append(f"LoRA dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("steps", "batch_size", "grad_accum", "lora_r", "lora_alpha", "kl_chunk", "samples_per_prompt", "sample_tokens"):
            if getattr(self, name) < 1:
                errors.append(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_prompts", "checkpoint_every", "max_prompts", "teacher_cache_mb"):
            if getattr(self, name) < 0:
                errors.append(f"{name.replace('_', ' ')} must be 0 or more, got {getattr(self, name)}")
        for name, most in TRAIN_MAXIMA.items():
            if getattr(self, name) > most:
                errors.append(f"{name.replace('_', ' ')} must be at most {most}, got {getattr(self, name)}")
        if errors:
            raise TrainError("; ".join(errors))
        return self


# Above these a number is a slip of the keyboard (a batch of 10^8 answers), not a setting: refused
# before a job is queued, and the Distill form's fields stop at them.
TRAIN_MAXIMA = {"steps": 1_000_000, "batch_size": 1024, "grad_accum": 1024, "lora_r": 1024, "lora_alpha": 8192,
                "kl_chunk": 1 << 16, "samples_per_prompt": 64, "warmup_steps": 1_000_000, "eval_every": 1_000_000,
                "checkpoint_every": 1_000_000, "eval_prompts": 1_000_000, "max_prompts": 10_000_000}


@dataclass
class Example:
    """One answer to train or evaluate on: the prompt and the answer's token ids."""

    prompt: str
    answer: list[int]


@dataclass
class Hooks:
    """How a run reports: ``log(values, step)``, ``progress(done, total, message)``, ``should_stop()``."""

    log: Callable[[dict, int], None] = lambda values, step: None
    progress: Callable[[int, int, str], None] = lambda done, total, message: None
    should_stop: Callable[[], bool] = lambda: False
    info: Callable[[str], None] = lambda message: None


# --------------------------------------------------------------------------- losses (pure)

def ce_per_token(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target token: (..., V), (...) -> (...)."""
    return F.cross_entropy(student_logits.float().flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


def token_losses(loss: str, student_logits, teacher_logits=None, targets=None, alpha: float = 0.5) -> dict:
    """Per-position loss terms: {"loss", and "kl" and/or "ce" where computed}, each of shape (...)."""
    out = {}
    if loss in ("kl", "mix"):
        out["kl"] = kl_per_token(teacher_logits, student_logits)
    if loss in ("sft", "mix"):
        out["ce"] = ce_per_token(student_logits, targets)
    out["loss"] = {"kl": lambda: out["kl"], "sft": lambda: out["ce"], "mix": lambda: alpha * out["ce"] + (1 - alpha) * out["kl"]}[loss]()
    return out


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def answer_mask(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) bool mask of the answer positions of right-aligned rows: row i's last lengths[i]
    slots. Prompt tokens and left padding are False, so no loss is taken on them."""
    cols = torch.arange(width)[None, :]
    return cols >= width - torch.tensor(lengths)[:, None]


def chunked_loss(lm_head, loss: str, h_student: torch.Tensor, h_teacher: torch.Tensor | None, targets: torch.Tensor,
                 alpha: float = 0.5, chunk: int = 256, backward_scale: float | None = None) -> dict:
    """Sum of each loss term over N answer positions, from final hidden states (N, H).

    Full-vocabulary logits exist for at most ``chunk`` positions at a time. With ``backward_scale``
    the scaled loss is also back-propagated chunk by chunk into a detached copy of ``h_student``,
    and from there through the model once, so the logits of all positions are never alive together.
    Returns {"loss", "kl"?, "ce"?: float sums, "tokens": N}.
    """
    backward = backward_scale is not None and h_student.requires_grad
    hd = h_student.detach().requires_grad_(backward)
    sums: dict[str, float] = {}
    for start in range(0, h_student.shape[0], chunk):
        end = start + chunk
        with torch.no_grad():
            teacher = lm_head(h_teacher[start:end]) if h_teacher is not None else None
        with torch.enable_grad() if backward else torch.no_grad():
            terms = token_losses(loss, lm_head(hd[start:end]), teacher, targets[start:end], alpha)
            if backward:
                (terms["loss"].sum() * backward_scale).backward()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach().sum())
    if backward and hd.grad is not None:
        h_student.backward(hd.grad)
    sums["tokens"] = int(h_student.shape[0])
    return sums


# --------------------------------------------------------------------------- batches

def _condition(tokenizer, system, examples, prompts: list[str]):
    """(prefix ids, suffix ids per prompt) for one condition of the chat template."""
    prefix_ids, _, suffixes = split_rows(tokenizer, [(system, p) for p in prompts], examples)
    return prefix_ids[0], suffixes


def _hidden(model, prefixes: Prefixes, seqs: list[list[int]], pad_id: int, width: int) -> torch.Tensor:
    """Final hidden states (B, width, H) at the positions that predict the last ``width`` tokens of
    each left-padded sequence, after the cached prefix."""
    ids, _, attention, positions = suffix_inputs(prefixes, [0] * len(seqs), seqs, pad_id)
    device = model.device
    out = decoder_of(model)(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                  cache=prefixes.cache_for(len(seqs)) if prefixes.total else None, use_cache=bool(prefixes.total))
    return out.last_hidden_state[:, -width - 1 : -1]


class _PrefixRow:
    """Stands in for the key/value cache of a forward pass whose row 0 holds a prefix that the
    other rows share: each layer's attention sees row 0's last ``length`` keys and values before
    every row's own (the layers hand their keys and values to ``update`` as they would to a cache)."""

    def __init__(self, length: int):
        self.length = length

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        def widen(t):
            return torch.cat([t[:1, :, t.shape[2] - self.length:].expand(t.shape[0], -1, -1, -1), t], dim=2)
        return widen(keys), widen(values)


def _hidden_after_shared_prefix(model, prefix: list[int], seqs: list[list[int]], pad_id: int, width: int) -> torch.Tensor:
    """As ``_hidden``, for rows that all follow ``prefix``, which is encoded as an extra row of the
    same forward pass: the rows attend to its keys and values, and gradients flow back into the
    weights that encoded it. One pass instead of a prefix pass and a batch pass: on the CPU a pass
    costs per operation as much as per token, and a pass of its own cost a 24-token prefix a third
    of the time of a batch of eight rows."""
    if not prefix:
        return _hidden(model, Prefixes(model, [[]]), seqs, pad_id, width)
    span = len(prefix)
    # row 0 is the prefix, from position 0; the other rows continue after it
    ids, own, positions = left_padded([prefix] + seqs, pad_id, [0] + [span] * len(seqs))
    own, cols = own.bool(), ids.shape[1]
    query, key = torch.arange(cols)[:, None], torch.arange(cols)[None, :]
    # a query sees its row's earlier real tokens, and itself (so a padding query is never left
    # with nothing to attend to); rows 1.. see the prefix, row 0 (the prefix itself) does not
    allowed = ((key <= query)[None] & own[:, None, :]) | (key == query)[None]
    sees_prefix = torch.ones((len(ids), cols, span), dtype=torch.bool)
    sees_prefix[0] = False
    allowed = torch.cat([sees_prefix, allowed], dim=2)[:, None]
    dtype, device = model.get_input_embeddings().weight.dtype, model.device
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    out = decoder_of(model)(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                            cache=_PrefixRow(span), use_cache=False)
    return out.last_hidden_state[1:, -width - 1 : -1]


class Distiller:
    """The tensors of one batch of answers under both conditions, on one shared model.

    The teacher (base weights, adapter off, constitution in context) does not change while the
    adapter trains, so with ``teacher_cache_mb`` its final hidden states along each answer are
    kept (H numbers per token, not a vocabulary's worth of logits): from the sampling pass that
    wrote the answer (``sample_answers``), else from their first computation; steps and
    evaluations of a kept answer skip the teacher's forward pass."""

    def __init__(self, model, tokenizer, system: str, examples: list[dict] = (), teacher_cache_mb: float = 0):
        self.model, self.tokenizer, self.system, self.examples = model, tokenizer, system, list(examples)
        self.teacher_cache: dict[tuple, torch.Tensor] = {}     # (prompt, answer ids) -> (len(answer), H)
        self._cache_left = int(teacher_cache_mb * 2**20)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        teacher_prefix, _ = _condition(tokenizer, system, self.examples, ["a"])
        # The teacher never changes during a run: its constitution prefix is encoded once, here.
        with self.teacher_mode():
            self.teacher_prefixes = Prefixes(model, [teacher_prefix])
        self.lm_head = model.get_output_embeddings()
        # A 16-bit base model (the 4-bit one computes in bf16) runs the float32 adapter in its own
        # precision too (autocast): no float32 copies of every layer's input kept for the backward.
        self.compute_dtype = model.get_input_embeddings().weight.dtype

    def teacher_mode(self):
        return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else _null()

    def _suffixes(self, batch: list[Example]):
        prompts = [ex.prompt for ex in batch]
        prefix, teacher = _condition(self.tokenizer, self.system, self.examples, prompts)
        if prefix != self.teacher_prefixes.ids[0]:
            raise TrainError("the constitution prefix changed between prompts; the tokenizer merges across the system turn")
        student_prefix, student = _condition(self.tokenizer, None, (), prompts)
        answers = [ex.answer for ex in batch]
        return [t + a for t, a in zip(teacher, answers)], student_prefix, [s + a for s, a in zip(student, answers)], answers

    def row_lengths(self, examples: list[Example]) -> list[int]:
        """Tokens each answer's rows hold after the cached prefix (its prompt's turn and the answer):
        what a batch is padded to, so what length-grouped batches group by."""
        _, student = _condition(self.tokenizer, None, (), [ex.prompt for ex in examples])
        return [len(s) + len(ex.answer) for s, ex in zip(student, examples)]

    def hidden(self, batch: list[Example], with_teacher: bool = True):
        """(student hidden (N, H), teacher hidden (N, H) or None, targets (N,)) at the answer positions.

        The student's own constant prefix (the template's default system turn) is encoded once per
        batch, with gradients, and shared by its rows instead of being re-encoded in each
        (``_hidden_after_shared_prefix``)."""
        teacher_seqs, student_prefix, student_seqs, answers = self._suffixes(batch)
        width = max(len(a) for a in answers)
        mask = answer_mask([len(a) for a in answers], width)
        targets = torch.zeros(len(batch), width, dtype=torch.long)
        for row, a in enumerate(answers):
            targets[row, width - len(a):] = torch.tensor(a, dtype=torch.long)
        with torch.autocast(self.model.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            h_student = _hidden_after_shared_prefix(self.model, student_prefix, student_seqs, self.pad_id, width)
        h_student = h_student[mask.to(self.model.device)]
        h_teacher = self._teacher_hidden(batch, teacher_seqs) if with_teacher else None
        return h_student, h_teacher, targets[mask].to(self.model.device)

    def _teacher_hidden(self, batch: list[Example], teacher_seqs: list[list[int]]) -> torch.Tensor:
        """The teacher's hidden states (N, H) at the answer positions, from the cache where it can."""
        keys = [(ex.prompt, tuple(ex.answer)) for ex in batch]
        todo = [row for row, key in enumerate(keys) if key not in self.teacher_cache]
        fresh = {}
        if todo:
            lengths = [len(batch[row].answer) for row in todo]
            width = max(lengths)
            with torch.no_grad(), self.teacher_mode():
                h = _hidden(self.model, self.teacher_prefixes, [teacher_seqs[row] for row in todo], self.pad_id, width)
                h = h[answer_mask(lengths, width).to(self.model.device)]
            for row, part in zip(todo, h.split(lengths)):
                fresh[keys[row]] = part
                self.keep_teacher(batch[row], part)
        return torch.cat([self.teacher_cache.get(key, fresh.get(key)) for key in keys])

    def keep_teacher(self, example: Example, states: torch.Tensor) -> None:
        """Keep the teacher's final hidden states (len(answer), H) along ``example``'s answer, if the
        cache has room: from a batch above, or from the sampling pass that wrote the answer."""
        key = (example.prompt, tuple(example.answer))
        if key not in self.teacher_cache and states.nbytes <= self._cache_left:
            self.teacher_cache[key] = states.detach().clone()
            self._cache_left -= states.nbytes


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length inside windows of 8 batches so that a
    batch holds rows of similar length (little padding), then the batch order shuffled again."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class Schedule:
    """Which examples micro-batch m of the whole run holds; the same on every process and after a resume."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._epochs: dict[int, list[list[int]]] = {}

    def micro_batch(self, m: int) -> list[int]:
        per_epoch = math.ceil(len(self.lengths) / self.batch_size)
        epoch = m // per_epoch
        if epoch not in self._epochs:
            self._epochs = {epoch: length_grouped_batches(self.lengths, self.batch_size, self.seed, epoch)}
        return self._epochs[epoch][m % per_epoch]


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return factor


# --------------------------------------------------------------------------- setup

def _setup_accelerator(device: str | None = None):
    from accelerate import Accelerator

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return Accelerator(cpu=cpu)


def _setup_model(cfg: TrainConfig, base, seed: int):
    """Wrap the loaded base model with a fresh LoRA adapter; only the adapter trains."""
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
        model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as exc:
        raise TrainError(f"cannot add a LoRA adapter: {exc}") from exc
    model.train()
    return model


def _setup_optimizer(cfg: TrainConfig, model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    return params, optimizer, scheduler


def sample_answers(distiller: Distiller, prompts: list[str], cfg: TrainConfig, *, seed: int, accelerator=None,
                   batch_size: int = 64, progress=None) -> list[Example]:
    """Teacher samples (adapter off, constitution in context), this process's share batched, then gathered."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    rows = [(p, k) for p in prompts for k in range(cfg.samples_per_prompt)]
    mine = list(range(rank, len(rows), world))
    sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=cfg.temperature, seed=seed)
    done: dict[int, list[int]] = {}
    model, tok = distiller.model, distiller.tokenizer
    end = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    was_training = model.training
    model.eval()
    with distiller.teacher_mode():
        for start in range(0, len(mine), batch_size):
            part = mine[start:start + batch_size]
            states: list[torch.Tensor] = []
            ids = generate_rows(model, tok, [(distiller.system, rows[i][0]) for i in part], sampling,
                                sample_index=[rows[i][1] + 1_000 * i for i in part], examples=distiller.examples,
                                prefixes=distiller.teacher_prefixes, states=states)
            for i, answer, h in zip(part, ids, states):
                # an answer that ended by itself ends with the end-of-turn token: the student learns to stop
                done[i] = answer + ([end] if len(answer) < cfg.sample_tokens and end is not None else [])
                # the states the answer was sampled from are the teacher's along it: training needs
                # no teacher forward for this answer
                distiller.keep_teacher(Example(rows[i][0], done[i]), h[:len(done[i])])
            if progress:
                progress(min(len(mine), start + batch_size), len(mine))
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        done = dict(kv for part in gather_object([list(done.items())]) for kv in part)
    return [Example(rows[i][0], done[i]) for i in range(len(rows)) if done[i]]


@torch.no_grad()
def heldout_kl(distiller: Distiller, examples: list[Example], batch_size: int = 16, chunk: int = 256, accelerator=None) -> float:
    """Token-weighted mean KL(teacher || student) along the held-out teacher samples (nats/token)."""
    model = distiller.model
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = examples[rank::world]
    total = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), batch_size):
        hs, ht, targets = distiller.hidden(mine[start:start + batch_size])
        sums = chunked_loss(distiller.lm_head, "kl", hs, ht, targets, chunk=chunk)
        total += torch.tensor([sums["kl"], sums["tokens"]], dtype=torch.float64)
    model.train(was_training)
    if world > 1:
        total = accelerator.reduce(total.to(accelerator.device), "sum").cpu()
    return float(total[0] / total[1]) if total[1] else math.nan


# --------------------------------------------------------------------------- adapters and checkpoints

def model_fingerprint(model) -> dict:
    """What an adapter must agree with: the base model's architecture and vocabulary."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return {k: getattr(config, k, None) for k in keys}


def save_adapter(model, path: Path, info: dict) -> Path:
    """The adapter in peft format (adapter_model.safetensors + adapter_config.json) and what it was trained on."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / RUN_FILE).write_text(json.dumps({**info, "base": model_fingerprint(model)}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def check_adapter(path, model) -> dict:
    """Raise AdapterError unless ``path`` holds a readable adapter made for this base model; returns its run info."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
    if not weights.is_file() or not config.is_file():
        raise AdapterError(f"{path} is not an adapter: adapter_model.safetensors or adapter_config.json is missing")
    try:
        info = json.loads((path / RUN_FILE).read_text()) if (path / RUN_FILE).is_file() else {}
        json.loads(config.read_text())
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise AdapterError(f"the adapter in {path} is corrupt or unreadable: {exc}") from exc
    want, have = info.get("base"), model_fingerprint(model)
    if want and want != have:
        diff = ", ".join(f"{k} {want.get(k)} vs {have.get(k)}" for k in have if want.get(k) != have.get(k))
        raise AdapterError(f"the adapter in {path} was trained on another base model ({diff}); load the model it was made for")
    hidden = have.get("hidden_size")
    for name, shape in shapes.items():
        if "lora_A" in name and hidden and shape[1] not in _in_features(model):
            raise AdapterError(f"the adapter in {path} does not fit this model: {name} expects {shape[1]} inputs")
    return info


def _in_features(model) -> set[int]:
    return {m.in_features for m in model.modules() if hasattr(m, "in_features")}


def load_adapter(model, path, trainable: bool = False, name: str = "default"):
    """Base model + a saved adapter (the student), after ``check_adapter``. On a peft model
    already holding adapters, adds this one under ``name``."""
    from peft import PeftModel

    check_adapter(path, model)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=trainable)
    except Exception as exc:  # shape mismatches and unknown modules surface here
        raise AdapterError(f"the adapter in {path} does not fit this model: {exc}") from exc


def merged_student(base, adapter_dir):
    """The student for inference: a separate copy of ``base`` with the adapter merged in, so the
    shared base model (teacher and unprompted base) stays untouched."""
    import copy

    return load_adapter(copy.deepcopy(base), adapter_dir).merge_and_unload().eval()


def _load_adapter_weights(model, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_adapter(path, model)
    try:
        result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors"), device=str(model.device)))
    except Exception as exc:
        raise AdapterError(f"the adapter in {path} does not fit this model: {exc}") from exc
    if getattr(result, "unexpected_keys", None):
        raise AdapterError(f"the adapter in {path} does not fit this model: unexpected {result.unexpected_keys[:3]}")


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    """checkpoints/step-N/: the adapter (safetensors) and state.pt (optimiser, scheduler, step, RNG, best)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    # Written under a hidden name and renamed when complete: a worker killed mid-write leaves no
    # half checkpoint for resume to pick up.
    name = f"step-{state['step']:06d}"
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_adapter(model, partial, {"step": state["step"]})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(), **state},
               partial / "state.pt")
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in sorted((Path(run_dir) / "checkpoints").glob("step-*")) if (p / "state.pt").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    _load_adapter_weights(model, path)
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
    except Exception as exc:
        raise AdapterError(f"the checkpoint {path} is corrupt or from another configuration: {exc}") from exc
    _set_rng_state(state.pop("rng"))
    return state


# --------------------------------------------------------------------------- the loop

OOM_ADVICE = ("out of memory: lower --batch-size (and raise --grad-accum to keep the effective batch), "
              "--kl-chunk, --sample-tokens or --lora-r, or use --quantize 4bit")


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def train(cfg: TrainConfig, model, tokenizer, system: str, train_examples: list[Example], heldout: list[Example], *,
          run_dir: Path, examples: list[dict] = (), hooks: Hooks = Hooks(), accelerator=None, info: dict | None = None,
          distiller: Distiller | None = None) -> dict:
    """Train the adapter of the peft ``model``; resume from the last checkpoint in ``run_dir`` if there is one.
    ``distiller``: the one that sampled the answers, with the teacher states it kept.

    Returns {heldout_kl_before, heldout_kl_after, gap_closed, best_step, step, stopped, adapter}."""
    cfg.validate()
    run_dir = Path(run_dir)
    if not train_examples:
        raise TrainError("nothing to train on: no answers")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    device = model.device
    distiller = distiller or Distiller(model, tokenizer, system, examples, teacher_cache_mb=cfg.teacher_cache_mb)
    params, optimizer, scheduler = _setup_optimizer(cfg, model)
    # fp16 compute (GPUs without bf16): gradients this small underflow in fp16, so the loss is
    # scaled up for the backward and the gradients scaled back before the step (a no-op otherwise)
    scaler = torch.amp.GradScaler(device.type, enabled=distiller.compute_dtype == torch.float16)
    schedule = Schedule(distiller.row_lengths(train_examples), cfg.batch_size, cfg.seed)
    state = {"step": 0, "best_step": 0, "best_kl": math.inf, "kl_before": None}
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

    def evaluate(step: int) -> float:
        value = heldout_kl(distiller, heldout, chunk=cfg.kl_chunk, accelerator=accelerator)
        hooks.log({"heldout_kl": value}, step)
        if value < state["best_kl"]:
            state.update(best_kl=value, best_step=step)
            if main:
                save_adapter(model, run_dir / "best", {**info, "step": step, "heldout_kl": value})
        return value

    if state["kl_before"] is None:
        hooks.progress(0, cfg.steps, "measuring the held-out KL before training")
        state["kl_before"] = evaluate(0)
    started, tokens_seen = time.perf_counter(), 0
    first_step = state["step"]
    stopped = False
    for step in range(state["step"], cfg.steps):
        if _stop_requested(hooks, accelerator):
            stopped = True
            break
        t0 = time.perf_counter()
        micro = [schedule.micro_batch((step * cfg.grad_accum + a) * world + r)
                 for a in range(cfg.grad_accum) for r in range(world)]
        # the loss is a token-weighted mean over the whole optimiser step, on every process
        step_tokens = sum(len(train_examples[i].answer) for batch in micro for i in batch)
        sums = {}
        backward_scale = float(scaler.scale(torch.tensor(1.0 / step_tokens, device=device)))
        try:
            for batch in micro[rank::world]:
                part = backward_batch(distiller, cfg, [train_examples[i] for i in batch], backward_scale)
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
        except Exception as exc:
            if _is_oom(exc):
                raise TrainError(OOM_ADVICE) from exc
            raise
        values = {k: v / step_tokens for k, v in sums.items() if k != "tokens"}
        if world > 1:
            grads = torch.cat([p.grad.flatten() for p in params])
            grads = accelerator.reduce(grads, "sum")
            offset = 0
            for p in params:
                p.grad.copy_(grads[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            totals = accelerator.reduce(torch.tensor([values.get("loss", 0.0), values.get("kl", 0.0)], device=device), "sum")
            values.update(loss=float(totals[0]), **({"kl": float(totals[1])} if "kl" in values else {}))
        if not all(math.isfinite(v) for v in values.values()):
            kept = latest_checkpoint(run_dir)
            raise TrainError(f"the loss became {values['loss']} at step {step + 1}; stopped without applying it. "
                             f"The last good checkpoint is {kept.name if kept else 'none (none was written yet)'}; "
                             "lower --lr or raise --warmup-steps and resume or start again")
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
        hooks.log({**{k: values[k] for k in ("loss", "kl") if k in values}, "lr": lr,
                   "tokens_per_s": step_tokens / max(time.perf_counter() - t0, 1e-9),
                   "peak_mem_mb": _peak_mem_mb(device)}, step + 1)
        eta = elapsed / (step + 1 - first_step) * (cfg.steps - step - 1)
        hooks.progress(step + 1, cfg.steps, f"step {step + 1}/{cfg.steps} · loss {values['loss']:.4f} · "
                                            f"{tokens_seen / elapsed:.0f} tok/s · ETA {_eta(eta)}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            evaluate(step + 1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps and main:
            save_checkpoint(run_dir, model, optimizer, scheduler, state)
    if stopped:
        if main and state["step"] > 0 and (latest_checkpoint(run_dir) is None
                                           or latest_checkpoint(run_dir).name != f"step-{state['step']:06d}"):
            save_checkpoint(run_dir, model, optimizer, scheduler, state)
        hooks.info(f"stopped at step {state['step']}; resume continues from there")
        return {"stopped": True, "step": state["step"], "heldout_kl_before": state["kl_before"]}
    final = evaluate(state["step"]) if state["best_step"] != state["step"] or state["step"] == 0 else state["best_kl"]
    if main:
        save_checkpoint(run_dir, model, optimizer, scheduler, state)
    kept_step, kept_kl = state["step"], final
    if cfg.keep_best and state["best_kl"] < final:
        if world > 1:
            accelerator.wait_for_everyone()  # the main process wrote best/
        _load_adapter_weights(model, run_dir / "best")
        kept_step, kept_kl = state["best_step"], state["best_kl"]
        hooks.info(f"kept the adapter of step {kept_step} (held-out KL {kept_kl:.4f} < {final:.4f} at the end)")
    result = {"stopped": False, "step": state["step"], "best_step": kept_step, "heldout_kl_before": state["kl_before"],
              "heldout_kl_last": final, "heldout_kl_after": kept_kl, "gap_closed": gap_closed(state["kl_before"], kept_kl)}
    if main:
        result["adapter"] = str(save_adapter(model, run_dir / "adapter", {**info, **result}))
        write_model_card(run_dir / "adapter", {**info, **result, "config": cfg.to_dict()})
    return result


def backward_batch(distiller: Distiller, cfg: TrainConfig, batch: list[Example], scale: float) -> dict:
    """One micro-batch: its loss sums (``chunked_loss``), and its loss times ``scale`` back-propagated
    into the adapter's gradients."""
    hs, ht, targets = distiller.hidden(batch, with_teacher=cfg.loss != "sft")
    return chunked_loss(distiller.lm_head, cfg.loss, hs, ht, targets, cfg.alpha, cfg.kl_chunk, backward_scale=scale)


def gap_closed(kl_base: float, kl_student: float) -> float:
    """1 - KL(teacher || student) / KL(teacher || base): 0 = untrained, 1 = the student is the teacher."""
    return 1 - kl_student / kl_base if kl_base and math.isfinite(kl_base) else math.nan


def _stop_requested(hooks: Hooks, accelerator) -> bool:
    """Every process must stop at the same step, or the others would wait for it forever."""
    stop = bool(hooks.should_stop())
    if accelerator is not None and accelerator.num_processes > 1:
        flag = accelerator.reduce(torch.tensor([float(stop)], device=accelerator.device), "max")
        stop = bool(flag.item())
    return stop


# --------------------------------------------------------------------------- runs (store, job, export)

def _setup_data(cfg: TrainConfig, store, distiller: Distiller, run_dir: Path, accelerator, hooks: Hooks):
    """Train and held-out answers, sampled once per run and kept in run_dir/data.json for resumes."""
    cache = run_dir / "data.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return [Example(**e) for e in data["train"]], [Example(**e) for e in data["heldout"]]
    from .sampling import ensure_default_prompts

    ensure_default_prompts(store, owner=cfg.owner)
    heldout_prompts = [p["text"] for p in store.get_prompts(cfg.prompt_set, split="heldout", owner=cfg.owner)]
    if not heldout_prompts:
        raise TrainError(f"prompt set {cfg.prompt_set!r} has no held-out prompts to measure the student on")
    heldout_prompts = heldout_prompts[:cfg.eval_prompts] if cfg.eval_prompts else heldout_prompts
    tok = distiller.tokenizer
    if cfg.data == "accepted":
        rows = accepted_texts(store, cfg)
        train_examples = [Example(p, tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids(tok.eos_token)])
                          for p, text in rows]
    else:
        prompts = [p["text"] for p in store.get_prompts(cfg.prompt_set, split="train", owner=cfg.owner)]
        if not prompts:
            raise TrainError(f"prompt set {cfg.prompt_set!r} has no train prompts")
        prompts = prompts[:cfg.max_prompts] if cfg.max_prompts else prompts
        train_examples = sample_answers(distiller, prompts, cfg, seed=cfg.seed, accelerator=accelerator,
                                        progress=lambda d, t: hooks.progress(0, cfg.steps, f"sampling teacher answers {d}/{t}"))
    hooks.progress(0, cfg.steps, "sampling held-out teacher answers")
    # one teacher sample per held-out prompt, from its own random stream
    heldout = sample_answers(distiller, heldout_prompts, replace(cfg, samples_per_prompt=1), seed=cfg.seed + 7919,
                             accelerator=accelerator)
    if accelerator is None or accelerator.is_main_process:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"train": [asdict(e) for e in train_examples], "heldout": [asdict(e) for e in heldout]}))
        tmp.replace(cache)
    return train_examples, heldout


def accepted_texts(store, cfg: TrainConfig) -> list[tuple[str, str]]:
    """(prompt, final text) of the accepted samples of the constitution version; refuses when there are none."""
    samples = store.list_samples(constitution_id=cfg.constitution_id, status="accepted", owner=cfg.owner)
    rows = [(s["prompt"], s["final"]) for s in samples if s["split"] == "train" and s["final"].strip()]
    if not rows:
        raise TrainError(f"constitution version {cfg.constitution_id} has no accepted samples with text: "
                         "accept some in the Curate tab, or train on fresh teacher samples (--data prompts)")
    return rows[:cfg.max_prompts] if cfg.max_prompts else rows


def models_dir(store) -> Path:
    """Where converted checkpoints live: $CTXDISTILL_MODELS (shared), else the workspace's models/."""
    return Path(os.environ.get("CTXDISTILL_MODELS") or store.models_dir)


def run(cfg: TrainConfig, store, run_dir, hooks: Hooks = Hooks(), accelerator=None) -> dict:
    """Everything a training job does: load the constitution, the model and the data, train, export."""
    from .constitution import content_hash, from_dict, render
    from .models import ModelError, load_model
    from .precision import policy

    cfg.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    row = store.get_constitution(cfg.constitution_id)
    constitution = from_dict(row["content"])
    if cfg.data == "accepted":
        accepted_texts(store, cfg)  # refuse before loading the model
    accelerator = accelerator or _setup_accelerator()
    chosen = policy(accelerator.device.type, cfg.quantize, cfg.precision)
    hooks.progress(0, cfg.steps, f"loading the model ({chosen.label})")
    hooks.info(f"precision: {chosen.label} ({chosen.reason})")
    try:
        base, tokenizer = load_model(cfg.model or None, quantize=cfg.quantize, precision=cfg.precision,
                                     device=str(accelerator.device), models_dir=models_dir(store))
    except ModelError as exc:
        raise TrainError(str(exc)) from exc
    model = _setup_model(cfg, base, cfg.seed)
    distiller_system = render(constitution)
    distiller = Distiller(model, tokenizer, distiller_system, constitution.examples, teacher_cache_mb=cfg.teacher_cache_mb)
    train_examples, heldout = _setup_data(cfg, store, distiller, run_dir, accelerator, hooks)
    hooks.info(f"{len(train_examples)} training answers, {len(heldout)} held-out answers, {chosen.label}")
    info = {"constitution": row["name"], "constitution_id": row["id"], "constitution_hash": content_hash(constitution),
            "base_model": cfg.model or "embedded SmolLM2-135M-Instruct", "quantize": chosen.quantize,
            "precision": chosen.compute, "precision_reason": chosen.reason,
            "prompt_set": cfg.prompt_set, "n_train": len(train_examples), "n_heldout": len(heldout)}
    result = train(cfg, model, tokenizer, distiller_system, train_examples, heldout, run_dir=run_dir,
                   examples=constitution.examples, hooks=hooks, accelerator=accelerator, info=info, distiller=distiller)
    return {**info, **result}


def train_job(ctx, config: dict) -> None:
    """The "train" job kind: ``fn(ctx, config)`` run by a worker process (see jobs.py)."""
    cfg = TrainConfig.from_dict(config)
    hooks = Hooks(log=lambda values, step: ctx.log_metrics(step, values), progress=ctx.progress,
                  should_stop=ctx.should_stop, info=ctx.log.info)
    ctx.set_result({"run": ctx.job_id, **run(cfg, ctx.store, ctx.run_dir, hooks)})


def write_model_card(path: Path, info: dict) -> Path:
    """README.md for an exported adapter or merged model: constitution version, data, loss, held-out figures."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    config = info.get("config", {})
    lines = [
        "---", "library_name: peft", "tags: [context-distillation, lora, ctxdistill]", "---", "",
        f"# {info.get('constitution', 'constitution')} (context-distilled)", "",
        "A LoRA adapter trained with ctxdistill so that the model answers *without* its constitution in the "
        "prompt as it does *with* it (context distillation).", "",
        "| | |", "|---|---|",
        f"| base model | {info.get('base_model', '')} ({info.get('quantize', '')}, {info.get('precision', '')} compute) |",
        f"| precision | {info.get('precision_reason', '')} |",
        f"| constitution | {info.get('constitution', '')}, version {info.get('constitution_id', '')}, sha256 {str(info.get('constitution_hash', ''))[:12]} |",
        f"| data | {info.get('data', '')}: {info.get('n_train', '?')} answers from prompt set {info.get('prompt_set', '')!r} |",
        f"| loss | {info.get('loss', '')} |",
        f"| steps | {info.get('step', '')} (kept step {info.get('best_step', '')}) |",
        f"| held-out KL(teacher‖base) | {fmt(info.get('heldout_kl_before'))} nats/token |",
        f"| held-out KL(teacher‖student) | {fmt(info.get('heldout_kl_after'))} nats/token |",
        f"| KL gap closed | {fmt(info.get('gap_closed'))} (on {info.get('n_heldout', '?')} held-out answers) |",
        *(["", info["evaluation"]] if info.get("evaluation") else []),
        "", "## Training settings", "", "```json", json.dumps(config, indent=2), "```", "",
    ]
    out = Path(path) / "README.md"
    out.write_text("\n".join(lines))
    return out


def export(adapter_dir, out_dir, *, merged: bool = False, model_spec: str | None = None, models_dir=None) -> Path:
    """Copy the adapter (peft safetensors) with a model card to ``out_dir``; with ``merged``, write the
    base model with the adapter merged into it, in bfloat16, instead."""
    from .models import load_model

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{adapter_dir} is not an adapter: adapter_model.safetensors is missing")
    info = json.loads((adapter_dir / RUN_FILE).read_text()) if (adapter_dir / RUN_FILE).is_file() else {}
    if (adapter_dir / EVAL_FILE).is_file():
        info["evaluation"] = json.loads((adapter_dir / EVAL_FILE).read_text()).get("markdown", "")
    if not merged:
        shutil.copytree(adapter_dir, out_dir, dirs_exist_ok=True)
        write_model_card(out_dir, info)
        return out_dir
    base, tokenizer = load_model(model_spec, models_dir=models_dir)
    model = load_adapter(base, adapter_dir).merge_and_unload()
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    card = write_model_card(out_dir, info)
    card.write_text(card.read_text().replace("library_name: peft", "library_name: transformers"))
    return out_dir


def push_to_hub(folder, repo_id: str, private: bool = True) -> str:
    """Upload an exported folder. The token comes from the environment (HF_TOKEN), never from a file we write."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise TrainError("no Hugging Face token configured: set HF_TOKEN in the environment to push")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"
