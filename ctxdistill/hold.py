"""Make it hold: what the student is shown beyond clean single-turn prompts, so that the baked
behaviour is not talked out of the model and does not fade in a conversation. Each remedy changes
only the student's side of a training answer; the target is always the teacher (adapter off, the
constitution in context) on the clean input.

* **Override attempts** (``attack_share``): the student sees the prompt wrapped in an attack
  template (ctxdistill/data/attacks_train.jsonl, or a user's file; never the evaluation's
  attacks.jsonl), the teacher the clean prompt, along the same answer tokens. Which answers are
  attacked, and by which template, is drawn afresh each time an answer comes up (seeded). Whatever
  an attempt asks for is trained away with it, so the shipped ones ask only to drop the
  constitution: none asks for a format, a length or a language a user may rightly ask for.
* **Conversations** (``multiturn_share``): a share of the train prompts also becomes a
  conversation (the prompt, the teacher's answer, a follow-up from
  ctxdistill/data/followups_train.jsonl or a user's file); the teacher answers the follow-up with
  the constitution and the whole history, the student sees the history without it, and the loss
  covers that second answer.
* **User instructions** (``instruction_share``): a share of the train prompts also comes with a
  benign user instruction appended (ctxdistill/data/instructions_train.jsonl, or a user's file;
  never the evaluation's benign set): the teacher answers it with the constitution, so the student
  learns that a baked behaviour still leaves room for what the user asks where the two agree.
* **On-policy answers** (``on_policy_share``, GKD's lambda): a share of the micro-batches is
  answered by the student itself at that step (adapter on, no constitution, the run's sampling
  temperature) and scored by the teacher token by token. With ``--loss mix`` those rows take the
  KL term only (cross-entropy on one's own samples teaches nothing); ``--loss sft`` is refused.

Every file is read and checked before a model loads (``check``). Each held-out measurement also
logs ``heldout_kl_attacked`` (``attacked_probes``) and ``heldout_kl_second_turn`` (held-out
conversations the teacher answers, sampled by mix.setup_data).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from .benign import TRAIN_FILE
from .capability import DATA_DIR
from .engine import Example, with_end
from .probes import Attack, RobustnessError, combine, load_attacks, load_follow_ups
from .sampling import SamplingConfig, generate_rows
from .train_config import TrainConfig, TrainError

TRAIN_ATTACKS_FILE = DATA_DIR / "attacks_train.jsonl"
TRAIN_FOLLOW_UPS_FILE = DATA_DIR / "followups_train.jsonl"
# held-out conversations the second-turn held-out KL of a multi-turn run is measured on
SECOND_TURN_PROBES = 12


def _read(load, path: str, shipped: Path) -> list:
    """A training set: the user's file, refused as the evaluation refuses its own (a bad line, or over
    the size and row limits of the one caps table that every set a user gives is held to), or the
    shipped training set."""
    try:
        return load(path.strip() or shipped)
    except RobustnessError as exc:
        raise TrainError(str(exc)) from None


def train_attacks(path: str = "") -> list[Attack]:
    """The override attempts a run trains on (JSON lines of kind, template with {prompt}, optional
    history): the user's file, or the shipped training set."""
    return _read(load_attacks, path, TRAIN_ATTACKS_FILE)


def train_follow_ups(path: str = "") -> list[str]:
    """The follow-up messages a run's conversations use (JSON lines with a text field): the user's
    file, or the shipped training set."""
    return _read(load_follow_ups, path, TRAIN_FOLLOW_UPS_FILE)


def train_instructions(path: str = "") -> list[str]:
    """The user instructions a run appends to a share of its prompts (JSON lines with a text field): the
    user's file, or the shipped training set."""
    return _read(lambda p: load_follow_ups(p, what="instruction"), path, TRAIN_FILE)


def check(cfg: TrainConfig) -> None:
    """Every refusal of the sets a run's augmentations read, before a model loads."""
    if cfg.attack_share:
        train_attacks(cfg.attack_set)
    if cfg.multiturn_share:
        train_follow_ups(cfg.followup_set)
    if cfg.instruction_share:
        train_instructions(cfg.instruction_set)


def instructed(prompts: list[str], instructions: list[str], share: float, seed: int) -> list[str]:
    """A seeded pick of ``share`` of the prompts, each with a user instruction appended."""
    if not (share and prompts and instructions):
        return []
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(prompts)), max(1, round(share * len(prompts)))))
    return [f"{prompts[i].rstrip()} {rng.choice(instructions)}" for i in picked]


def conversations(tokenizer, first: list[Example], follow_ups: list[str], share: float, seed: int) -> list[list[dict]]:
    """A seeded pick of ``share`` of the first-turn answers, each as a conversation ending with a
    follow-up (the teacher's first answer, as text, in the history)."""
    if not (share and first and follow_ups):
        return []
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(first)), max(1, round(share * len(first)))))
    return [
        [
            {"role": "user", "content": first[i].prompt},
            {"role": "assistant", "content": tokenizer.decode(first[i].answer, skip_special_tokens=True).strip()},
            {"role": "user", "content": rng.choice(follow_ups)},
        ]
        for i in picked
    ]


class Augment:
    """What the student sees of each training row at each draw (a micro-batch of the run)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.attacks = train_attacks(cfg.attack_set) if cfg.attack_share else []

    @property
    def active(self) -> bool:
        return bool(self.attacks or self.cfg.on_policy_share)

    def shown(self, example: Example, index: int, draw: int) -> Example:
        """The row as the student sees it at micro-batch ``draw``: attacked where drawn."""
        rng = random.Random(f"{self.cfg.seed}:{draw}:{index}")
        if self.attacks and isinstance(example.prompt, str) and rng.random() < self.cfg.attack_share:
            example = replace(example, seen=combine(rng.choice(self.attacks), example.prompt))
        return example

    def batch(self, pair, rows: list[tuple[int, Example]], draw: int) -> list[Example]:
        """The micro-batch ``draw`` of (index, example) rows as trained on: attacked where drawn, and,
        for a micro-batch drawn on-policy (a share of them, as GKD's lambda), re-answered by the student
        now. A whole micro-batch at once: sampling costs per decoding step far more than per row, so
        drawing each row instead made every step sample (40 steps: x3.2 the time of a plain run, where
        TRL's GKDTrainer, drawing per step, took x1.7)."""
        out = [self.shown(ex, i, draw) for i, ex in rows]
        if random.Random(f"{self.cfg.seed}:{draw}:own").random() < self.cfg.on_policy_share:
            answers = own_answers(pair, out, self.cfg, [draw * 1_000 + k for k in range(len(out))])
            out = [replace(ex, answer=answer, own=True) for ex, answer in zip(out, answers)]
        return out


def own_answers(pair, examples: list[Example], cfg: TrainConfig, index: list[int]) -> list[list[int]]:
    """The student's own answers (adapter on, no constitution) to what it sees of each example,
    with the run's sampling settings; ``index`` seeds each row's random stream."""
    model = pair.model
    was_training = model.training
    model.eval()
    sampling = SamplingConfig(cfg.sample_tokens, temperature=cfg.temperature, seed=cfg.seed + 15_485_863)
    rows = [(None, ex.student_input) for ex in examples]
    ids = generate_rows(model, pair.tokenizer, rows, sampling, sample_index=index)
    model.train(was_training)
    return with_end(pair.tokenizer, ids, cfg.sample_tokens)


def attacked_probes(cfg: TrainConfig, heldout: list[Example]) -> list[Example]:
    """The held-out answers with the student's prompt under a training attack (a fixed pick per answer):
    KL(clean teacher ‖ attacked student) along them is the run's attacked held-out KL."""
    if not cfg.attack_share:
        return []
    attacks = train_attacks(cfg.attack_set)
    rng = random.Random(cfg.seed + 31)
    return [replace(ex, seen=combine(rng.choice(attacks), ex.prompt)) for ex in heldout if isinstance(ex.prompt, str)]


def probe_names(cfg: TrainConfig) -> dict[str, str]:
    """The metric each held-out probe set logs, for the run's settings."""
    return {
        **({"attacked": "heldout_kl_attacked"} if cfg.attack_share else {}),
        **({"second_turn": "heldout_kl_second_turn"} if cfg.multiturn_share else {}),
    }


def summary(cfg: TrainConfig, train: list[Example]) -> dict:
    """Which augmentations a run used, for its result and model card."""
    return {
        "attack_share": cfg.attack_share,
        "attack_set": (cfg.attack_set.strip() or "shipped training set") if cfg.attack_share else "",
        "multiturn_share": cfg.multiturn_share,
        "followup_set": (cfg.followup_set.strip() or "shipped training set") if cfg.multiturn_share else "",
        "second_turn_answers": sum(not isinstance(ex.prompt, str) for ex in train),
        "instruction_share": cfg.instruction_share,
        "instruction_set": (cfg.instruction_set.strip() or "shipped training set") if cfg.instruction_share else "",
        "on_policy_share": cfg.on_policy_share,
    }


def describe(used: dict) -> str:
    parts = []
    if used["attack_share"]:
        parts.append(f"{used['attack_share']:.0%} of the answers shown under override attempts ({used['attack_set']})")
    if used["multiturn_share"]:
        parts.append(f"{used['second_turn_answers']} answers to follow-ups ({used['followup_set']})")
    if used.get("instruction_share"):
        parts.append(
            f"{used['instruction_share']:.0%} of the prompts also with a user instruction ({used['instruction_set']})"
        )
    if used["on_policy_share"]:
        parts.append(f"{used['on_policy_share']:.0%} of the rows answered by the student itself")
    return "; ".join(parts) or "off"


def shares(rows: list[Example]) -> dict:
    """The share of a step's rows shown attacked, holding a conversation, and answered on-policy."""
    n = max(len(rows), 1)
    return {
        "share_attacked": sum(ex.seen is not None for ex in rows) / n,
        "share_second_turn": sum(not isinstance(ex.prompt, str) for ex in rows) / n,
        "share_on_policy": sum(ex.own for ex in rows) / n,
    }
