"""What an evaluation is asked to do and what it needs, checked before a model loads: the
``EvalConfig`` (each field a ``ctxdistill eval`` flag) and the ``Plan`` built from the workspace and
the suite's files, with the demo's scaling of the suite (``fit_suite``, ``largest_part``).
evaluate.py runs the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import probes, robustness
from .adapters import RUN_FILE, root_config, run_adapter
from .config import StageConfig
from .precision import choice_errors
from .safety import quote
from .sampling import SamplingConfig


class EvalError(RuntimeError):
    """An evaluation that cannot start; the message says what to change."""


@dataclass
class EvalConfig(StageConfig):
    """One evaluation. Each field is also a ``ctxdistill eval`` flag."""

    error = EvalError
    what = "evaluation option"

    constitution_id: int = field(
        default=0, metadata={"help": "constitution version id (the CLI fills it from --constitution)"}
    )
    runs: list = field(default_factory=list, metadata={"help": "training runs (job ids) to score as students"})
    prompt_set: str = field(default="default", metadata={"help": "prompt set whose held-out prompts are scored"})
    max_prompts: int = field(default=0, metadata={"help": "score at most this many held-out prompts (0 = all)"})
    sample_tokens: int = field(default=40, metadata={"help": "tokens per sampled answer"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (1 = the teacher's own distribution)"}
    )
    seed: int = field(
        default=0, metadata={"help": "random seed; teacher, base and students share each prompt's stream"}
    )
    batch_size: int = field(default=16, metadata={"help": "answers per scoring forward pass"})
    gen_batch: int = field(default=32, metadata={"help": "rows per sampling batch"})
    influence_prompts: int = field(default=8, metadata={"help": "prompts for principle influence (0 = skip it)"})
    categories: list = field(
        default_factory=list, metadata={"help": "score only the held-out prompts of these categories (empty: all)"}
    )
    robustness: bool = field(
        default=True,
        metadata={
            "help": "also run the robustness suite: capability, benign instructions, second turn, injection, "
            "placebo, savings (robustness.py)"
        },
    )
    suite_prompts: int = field(
        default=16,
        metadata={
            "help": "held-out prompts of the second turn, the attacks and the placebo, taken in turn from each category"
        },
    )
    attack_prompts: int = field(default=6, metadata={"help": "prompts each kind of attack is combined with"})
    capability_set: str = field(
        default="", metadata={"help": "capability set file (JSON lines of prompt, answers; empty: the shipped set)"}
    )
    capability_items: int = field(
        default=0,
        metadata={
            "help": "score this many capability items, taken in turn from each kind of question (0 = the whole set)"
        },
    )
    attack_set: str = field(
        default="",
        metadata={"help": "attack set file (JSON lines of kind, template with {prompt}; empty: the shipped set)"},
    )
    follow_ups: str = field(
        default="",
        metadata={
            "help": "follow-up messages of the second turn (JSON lines of text, or user turns of role and content; "
            "empty: the shipped ones)"
        },
    )
    benign_items: int = field(
        default=0,
        metadata={
            "help": "score this many benign instructions, taken in turn from each kind (0 = the whole shipped set)"
        },
    )
    retention_set: str = field(
        default="",
        metadata={"help": "prompt set whose held-out base answers measure retention (empty: the scored prompts)"},
    )
    judge: bool = field(
        default=False, metadata={"help": "also ask a judge model whether each answer follows each principle"}
    )
    judge_model: str = field(default="", metadata={"help": "judge model spec (empty: the evaluated base model)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples behind each interval"})
    quantize: str = field(default="auto", metadata={"help": "auto (what the first run trained with), 4bit or none"})
    precision: str = field(
        default="auto", metadata={"help": "compute dtype: auto (what the first run trained with), bf16, fp16 or fp32"}
    )
    model: str = field(default="", metadata={"help": "model spec (empty: the workspace default)"})
    owner: str = field(default="", metadata={"help": "workspace owner"})

    def validate(self) -> "EvalConfig":
        errors = []
        self.runs = [int(r) for r in self.runs]
        if len(set(self.runs)) != len(self.runs):
            errors.append("a run is listed twice")
        for name in ("sample_tokens", "batch_size", "gen_batch", "n_boot", "suite_prompts", "attack_prompts"):
            if getattr(self, name) < 1:
                errors.append(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_prompts", "influence_prompts", "capability_items", "benign_items"):
            if getattr(self, name) < 0:
                errors.append(f"{name.replace('_', ' ')} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.temperature <= 5:
            errors.append(f"temperature must be between 0 and 5, got {self.temperature}")
        errors += choice_errors(self.quantize, self.precision)
        if errors:
            raise EvalError("; ".join(errors))
        return self

    def sampling(self) -> SamplingConfig:
        """How every answer of the evaluation is sampled."""
        return SamplingConfig(max_new_tokens=self.sample_tokens, temperature=self.temperature, seed=self.seed)


@dataclass
class Plan:
    """Everything an evaluation needs, checked before the model is loaded."""

    constitution: object
    constitution_row: dict
    prompts: list[dict]
    retention_prompts: list[dict]
    runs: list[dict]  # {"run", "kind" (train or dpo), "adapter" (path), "config", "info", "training" (its curves)}
    capability: list = field(default_factory=list)  # capability.Item, when the robustness suite runs
    attacks: list = field(default_factory=list)  # probes.Attack
    follow_ups: list = field(default_factory=list)  # the second turn's follow-up messages
    benign: list = field(default_factory=list)  # benign.Instruction


def plan(cfg: EvalConfig, store) -> Plan:
    """Check the constitution, the prompts and the runs; raise EvalError with what to fix."""
    from .constitution import from_row
    from .prompts import ensure_default_prompts
    from .store import NotFound

    cfg.validate()
    try:
        row = store.get_constitution(cfg.constitution_id)
    except NotFound:
        raise EvalError(f"no constitution version {cfg.constitution_id} in this workspace") from None
    ensure_default_prompts(store, owner=cfg.owner)

    def heldout(set_name: str) -> list[dict]:
        if not any(s["name"] == set_name for s in store.prompt_sets(owner=cfg.owner)):
            raise EvalError(
                f"there is no prompt set {quote(set_name)} (sets: "
                f"{', '.join(s['name'] for s in store.prompt_sets(owner=cfg.owner)) or 'none'})"
            )
        rows = store.get_prompts(set_name, split="heldout", owner=cfg.owner)
        if not rows:
            raise EvalError(
                f"prompt set {quote(set_name)} has no held-out prompts: the student must be scored on prompts "
                "it never trained on. Re-import the set with a held-out fraction or a split column"
            )
        return rows

    prompts = heldout(cfg.prompt_set)
    if cfg.categories:
        have = sorted({p.get("category") or "" for p in prompts})
        missing = [c for c in cfg.categories if c not in have]
        if missing:
            raise EvalError(
                f"prompt set {quote(cfg.prompt_set)} has no held-out prompts in "
                f"categor{'y' if len(missing) == 1 else 'ies'} "
                f"{', '.join(map(repr, missing))} (categories with held-out prompts: {', '.join(have)})"
            )
        prompts = [p for p in prompts if p.get("category") in cfg.categories]
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts
    retention_prompts = heldout(cfg.retention_set) if cfg.retention_set else prompts
    runs = []
    for run_id in cfg.runs:
        try:
            job = store.get_job(run_id)
        except NotFound:
            raise EvalError(f"there is no run {run_id} in this workspace") from None
        if job["kind"] not in ("train", "dpo"):
            raise EvalError(f"job {run_id} is a {job['kind']} job, not a training run")
        adapter = run_adapter(store, run_id)
        if not (adapter / "adapter_model.safetensors").is_file():
            if job["state"] in ("queued", "running"):
                raise EvalError(f"run {run_id} has no adapter yet (it is {job['state']}); wait for it to finish")
            if job["state"] != "done":
                raise EvalError(f"run {run_id} ended {job['state']} without an adapter; resume it or train again")
            raise EvalError(f"the adapter of run {run_id} was deleted or is incomplete ({adapter}); train it again")
        model = root_config(store, job).get("model") or ""
        if model != (cfg.model or ""):
            raise EvalError(
                f"run {run_id} was trained on another base model ({model or 'the default model'}), "
                f"not {cfg.model or 'the default model'}: evaluate it with --model {model or 'embedded'}"
            )
        try:
            info = json.loads((adapter / RUN_FILE).read_text()) if (adapter / RUN_FILE).is_file() else {}
        except (OSError, ValueError) as exc:
            raise EvalError(
                f"the adapter of run {run_id} is corrupt ({adapter / RUN_FILE}: {exc}); train it again"
            ) from None
        runs.append(
            {
                "run": run_id,
                "kind": job["kind"],
                "adapter": adapter,
                "config": job["config"],
                "info": info,
                "training": training_curves(store, run_id),
            }
        )
    suite = {}
    if cfg.robustness:
        from .benign import BenignError, load_instructions
        from .capability import CapabilityError, load_items

        try:
            suite = {
                "capability": robustness.spread(load_items(cfg.capability_set or None), cfg.capability_items),
                "attacks": probes.load_attacks(cfg.attack_set or None),
                "follow_ups": probes.load_follow_ups(cfg.follow_ups or None),
                "benign": robustness.spread(load_instructions(), cfg.benign_items),
            }
        except (CapabilityError, BenignError, probes.RobustnessError) as exc:
            raise EvalError(str(exc)) from None
    return Plan(from_row(row), row, prompts, retention_prompts, runs, **suite)


def fit_suite(cfg: EvalConfig, cap: int) -> EvalConfig:
    """``cfg`` with the robustness suite's parts scaled to at most ``cap`` prompts each (a demo's cap):
    capability items, benign instructions, suite prompts, and prompts per kind of attack (at least one)."""
    if cfg.robustness:
        try:
            kinds = max(1, len(probes.load_attacks(cfg.attack_set or None)))
        except probes.RobustnessError as exc:
            raise EvalError(str(exc)) from None
        cfg.capability_items = min(cfg.capability_items or cap, cap)
        cfg.benign_items = min(cfg.benign_items or cap, cap)
        cfg.suite_prompts = min(cfg.suite_prompts, cap)
        cfg.attack_prompts = max(1, min(cfg.attack_prompts, cap // kinds))
    return cfg


def largest_part(cfg: EvalConfig, the_plan: Plan) -> int:
    """The most prompts one part of the evaluation answers: held-out, influence, capability, benign, attacked."""
    attacked = len(the_plan.attacks) * min(cfg.attack_prompts, cfg.suite_prompts)
    return max(len(the_plan.prompts), cfg.influence_prompts, len(the_plan.capability), len(the_plan.benign), attacked)


def label(run_id: int) -> str:
    return f"run {run_id}"


def training_curves(store, run_id: int) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of a training run (loss, kl, heldout_kl)."""
    curves: dict[str, list] = {}
    for m in store.get_metrics(run_id):
        if m["name"] in ("loss", "kl", "heldout_kl") and m["value"] is not None:
            curves.setdefault(m["name"], []).append([m["step"], m["value"]])
    return curves
