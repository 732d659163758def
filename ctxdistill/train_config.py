"""The settings of one distillation run (``TrainConfig``): each field is a ``ctxdistill train``
flag and a Distill form field, with its help text; ``validate`` names every problem at once, before
a job is queued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import StageConfig
from .precision import choice_errors
from .safety import quote
from .sampling import SamplingConfig

LOSSES = ("kl", "sft", "mix")


DATA_SOURCES = ("prompts", "accepted")


SCHEDULES = ("cosine", "linear", "constant", "wsd")


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what to change."""


# the fields of "make it hold" (hold.py): what a run shows the student beyond clean single-turn prompts
HOLD_FIELDS = (
    "attack_share",
    "attack_set",
    "multiturn_share",
    "followup_set",
    "instruction_share",
    "instruction_set",
    "on_policy_share",
)


@dataclass
class TrainConfig(StageConfig):
    """One distillation run. Each field is also a ``ctxdistill train`` flag."""

    error = TrainError
    what = "training option"

    constitution_id: int = field(
        default=0, metadata={"help": "constitution version id in the workspace (the CLI fills it from --constitution)"}
    )
    loss: str = field(
        default="kl",
        metadata={
            "help": "kl (match the teacher's whole next-token distribution), sft (cross-entropy on the texts) or mix"
        },
    )
    alpha: float = field(
        default=0.5, metadata={"help": "mix only: weight of the cross-entropy term (the KL term gets 1-alpha)"}
    )
    data: str = field(
        default="prompts",
        metadata={
            "help": (
                "prompts (fresh teacher samples of the prompt set's train split) or accepted (curated samples' final "
                "texts)"
            )
        },
    )
    prompt_set: str = field(
        default="default",
        metadata={"help": "prompt set: train prompts for --data prompts, held-out prompts for evaluation"},
    )
    max_prompts: int = field(default=0, metadata={"help": "use at most this many train prompts or samples (0 = all)"})
    samples_per_prompt: int = field(default=1, metadata={"help": "teacher samples per train prompt (--data prompts)"})
    sample_tokens: int = field(default=40, metadata={"help": "tokens per teacher sample (train and held-out)"})
    temperature: float = field(
        default=1.0, metadata={"help": "teacher sampling temperature (1 = the teacher's own distribution)"}
    )
    steps: int = field(default=80, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "answers per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=4, metadata={"help": "linear warm-up steps"})
    schedule: str = field(
        default="wsd",
        metadata={
            "help": (
                "learning rate after warm-up: wsd (constant, then a linear decay to 0 over the last quarter of the "
                "steps), constant, or a decay to 0 from the warm-up on: cosine or linear (the held-out best step is "
                "kept)"
            )
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: str = field(
        default="all-linear", metadata={"help": "comma-separated module names to adapt, or all-linear"}
    )
    quantize: str = field(
        default="auto",
        metadata={
            "help": (
                "auto (the precision policy: 4-bit NF4 where the device computes bf16 or fp16 natively, full weights "
                "on other CPUs), 4bit or none (16/32-bit LoRA)"
            )
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": (
                "compute dtype: auto (the precision policy: bf16 where native, fp16 on GPUs without bf16, else fp32), "
                "bf16, fp16 or fp32"
            )
        },
    )
    eval_every: int = field(
        default=10, metadata={"help": "measure held-out KL every N steps (0 = only at the start and the end)"}
    )
    eval_prompts: int = field(default=24, metadata={"help": "held-out prompts used for evaluation (0 = all)"})
    keep_best: bool = field(
        default=True, metadata={"help": "end with the adapter of the step with the lowest held-out KL"}
    )
    checkpoint_every: int = field(
        default=20, metadata={"help": "write a resumable checkpoint every N steps (0 = only when stopped)"}
    )
    kl_chunk: int = field(
        default=256, metadata={"help": "answer positions per full-vocabulary chunk (bounds the memory of the logits)"}
    )
    teacher_cache_mb: int = field(
        default=512,
        metadata={
            "help": (
                "memory for the teacher's final hidden states along each answer, kept from the sampling pass that "
                "wrote it (or its first computation) and reused by every step and evaluation (0 = recompute every "
                "step)"
            )
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed (data order, sampling, adapter init)"})
    heldout_categories: str = field(
        default="",
        metadata={
            "help": (
                "comma-separated prompt categories held out: never trained on, the held-out KL measured on their "
                "held-out prompts only (empty: train and score on every category)"
            )
        },
    )
    replay_set: str = field(
        default="short-answers",
        metadata={
            "help": (
                "general prompt set whose train prompts --replay-fraction mixes in (the shipped short-answers: "
                "short factual questions, apart from the capability set)"
            )
        },
    )
    replay_fraction: float = field(
        default=0.15,
        metadata={
            "help": (
                "share of the training answers that are the teacher's answers to the replay set's prompts (0 = none;"
                " a set too small for it is gone through more than once)"
            )
        },
    )
    capability_gauge: int = field(
        default=0,
        metadata={
            "help": (
                "capability items (a fixed subset of the capability set) scored at every held-out KL measurement, "
                "student and teacher (0 = off)"
            )
        },
    )
    baked_gauge: str = field(
        default="auto",
        metadata={
            "help": (
                "principles whose baked share (the share of their effect the student carries, as in the evaluation) "
                "each held-out measurement logs: auto (a re-bake's changed principles; none for a fresh adapter), all,"
                " none, or comma-separated principle ids"
            )
        },
    )
    from_run: int = field(
        default=0,
        metadata={
            "help": (
                "re-bake: start from this finished run's adapter, with a newer constitution version (0 = a fresh "
                "adapter)"
            )
        },
    )
    rebake_share: float = field(
        default=0.5,
        metadata={
            "help": (
                "re-bake: share of the train prompts it trains on, those whose answers the new teacher and the old "
                "student disagree on most"
            )
        },
    )
    rebake_replay: float = field(
        default=0.25,
        metadata={
            "help": (
                "re-bake: share of the mix replayed from the other, less changed prompts (keeps unchanged behaviour)"
            )
        },
    )
    attack_share: float = field(
        default=0.5,
        metadata={
            "help": (
                "make it hold: share of the training answers the student sees with its prompt wrapped in an override "
                "attempt, trained towards the teacher's answer to the clean prompt (0 = off)"
            )
        },
    )
    attack_set: str = field(
        default="",
        metadata={
            "help": (
                "override attempts to train on: a JSON lines file of kind, template with {prompt}, optional history "
                "(empty: the shipped training set, which shares no template with the evaluation's)"
            )
        },
    )
    multiturn_share: float = field(
        default=1.0,
        metadata={
            "help": (
                "make it hold: share of the train prompts that also become a conversation (the prompt, the teacher's "
                "answer, a follow-up) trained on the teacher's answer to the follow-up (0 = off)"
            )
        },
    )
    followup_set: str = field(
        default="",
        metadata={
            "help": (
                "follow-up messages for the conversations: a JSON lines file with a text field per line (empty: the "
                "shipped training follow-ups, apart from the evaluation's)"
            )
        },
    )
    instruction_share: float = field(
        default=0.0,
        metadata={
            "help": (
                "make it hold: share of the train prompts that also come with a benign user instruction appended "
                "(answer in two sentences, open with a word...), answered by the teacher with the constitution, so "
                "that the student keeps following the user where the constitution allows (0 = off)"
            )
        },
    )
    instruction_set: str = field(
        default="",
        metadata={
            "help": (
                "user instructions to append: a JSON lines file with a text field per line (empty: the shipped "
                "training instructions, apart from the evaluation's benign set)"
            )
        },
    )
    on_policy_share: float = field(
        default=0.0,
        metadata={
            "help": (
                "make it hold: share of the micro-batches whose answers are the student's own samples at that step, "
                "scored by the teacher token by token (kl or mix; 0 = off)"
            )
        },
    )
    model: str = field(default="", metadata={"help": "model spec (empty: the workspace default)"})
    owner: str = field(default="", metadata={"help": "workspace owner"})

    def validate(self) -> "TrainConfig":
        errors = []
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {', '.join(LOSSES)}, not {quote(self.loss)}")
        if self.data not in DATA_SOURCES:
            errors.append(f"data must be one of {', '.join(DATA_SOURCES)}, not {quote(self.data)}")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {quote(self.schedule)}")
        errors += choice_errors(self.quantize, self.precision)
        if not 0 <= self.alpha <= 1:
            errors.append(f"alpha must be between 0 and 1, got {self.alpha}")
        if not 0 <= self.replay_fraction < 1:
            errors.append(f"replay fraction must be in [0, 1), got {self.replay_fraction}")
        if not 0 < self.rebake_share <= 1:
            errors.append(f"re-bake share must be in (0, 1], got {self.rebake_share}")
        if not 0 <= self.rebake_replay < 1:
            errors.append(f"re-bake replay must be in [0, 1), got {self.rebake_replay}")
        for name in ("attack_share", "multiturn_share", "instruction_share", "on_policy_share"):
            if not 0 <= getattr(self, name) <= 1:  # NaN included
                errors.append(f"{name.replace('_', ' ')} must be in [0, 1], got {getattr(self, name)}")
        if self.on_policy_share and self.loss == "sft":
            errors.append(
                "on-policy share needs the teacher's distribution to score the student's own answers: "
                "with loss sft there is none (use kl or mix)"
            )
        if self.data == "accepted" and (self.heldout_categories.strip() or self.from_run):
            errors.append("category hold-out and re-bake train on fresh teacher samples: use data prompts")
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
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "lora_r",
            "lora_alpha",
            "kl_chunk",
            "samples_per_prompt",
            "sample_tokens",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "eval_every",
            "eval_prompts",
            "checkpoint_every",
            "max_prompts",
            "teacher_cache_mb",
            "capability_gauge",
            "from_run",
        ):
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
TRAIN_MAXIMA = {
    "steps": 1_000_000,
    "batch_size": 1024,
    "grad_accum": 1024,
    "lora_r": 1024,
    "lora_alpha": 8192,
    "kl_chunk": 1 << 16,
    "samples_per_prompt": 64,
    "warmup_steps": 1_000_000,
    "eval_every": 1_000_000,
    "checkpoint_every": 1_000_000,
    "eval_prompts": 1_000_000,
    "max_prompts": 10_000_000,
}
