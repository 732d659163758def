"""What a run trains on and is measured on, beyond the prompt set's two splits.

* ``split_prompts`` — the train and held-out prompts of a run; with ``heldout_categories`` it
  trains on the other categories only (no prompt of a held-out category, whatever its split, is
  ever trained on) and measures on the held-out prompts of the held-out categories.
* ``replay_prompts`` — prompts of a general prompt set mixed into the training answers (the same
  teacher answers them), so that they make up ``replay_fraction`` of the mix.
* ``disagreement`` / ``rebake_mix`` — a re-bake (``from_run``): each training answer of the *new*
  teacher scored by KL(new teacher ‖ old student) along it; the run trains on the most changed
  share, most changed first, with a replay share of the rest spread through it so that unchanged
  behaviour stays (``interleave``).
* ``gauge`` — the capability accuracy of the student (or the teacher) on a small fixed subset of
  the capability set, measured next to the held-out KL while a run trains.
* ``accepted_texts`` — the curated samples a ``--data accepted`` run trains on.
"""

from __future__ import annotations

import random

import torch

from .engine import Example, TeacherStudent
from .losses import kl_per_token
from .train_config import TrainConfig, TrainError


def categories(text: str) -> list[str]:
    """The comma-separated category names of ``heldout_categories``."""
    return [c.strip() for c in text.split(",") if c.strip()]


def split_prompts(store, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts) of the run, after ``max_prompts`` and ``eval_prompts``."""
    rows = store.get_prompts(cfg.prompt_set, owner=cfg.owner)
    held = categories(cfg.heldout_categories)
    if held:
        known = sorted({r["category"] for r in rows if r["category"]})
        for c in held:
            if not any(r["category"] == c and r["split"] == "heldout" for r in rows):
                raise TrainError(f"category {c!r} has no held-out prompts in prompt set {cfg.prompt_set!r} to score on"
                                 f" (its categories: {', '.join(known) or 'none'})")
        train = [r["text"] for r in rows if r["split"] == "train" and r["category"] not in held]
        heldout = [r["text"] for r in rows if r["split"] == "heldout" and r["category"] in held]
        if not train:
            raise TrainError(f"holding out {', '.join(held)} leaves no train prompts in prompt set {cfg.prompt_set!r}")
    else:
        train = [r["text"] for r in rows if r["split"] == "train"]
        heldout = [r["text"] for r in rows if r["split"] == "heldout"]
    if not heldout:
        raise TrainError(f"prompt set {cfg.prompt_set!r} has no held-out prompts to measure the student on")
    if not train and cfg.data == "prompts":
        raise TrainError(f"prompt set {cfg.prompt_set!r} has no train prompts")
    return (train[:cfg.max_prompts] if cfg.max_prompts else train,
            heldout[:cfg.eval_prompts] if cfg.eval_prompts else heldout)


def replay_prompts(store, cfg: TrainConfig, n_train: int) -> list[str]:
    """Prompts of ``cfg.replay_set`` (its train split) so that they are ``replay_fraction`` of the
    mix next to ``n_train`` prompts of the run's own set; a fixed random pick (the run's seed)."""
    if not cfg.replay_fraction:
        return []
    rows = [r["text"] for r in store.get_prompts(cfg.replay_set, split="train", owner=cfg.owner)]
    if not rows:
        raise TrainError(f"replay prompt set {cfg.replay_set!r} has no train prompts")
    want = round(n_train * cfg.replay_fraction / (1 - cfg.replay_fraction))
    if want > len(rows):
        raise TrainError(f"a replay fraction of {cfg.replay_fraction:g} next to {n_train} train prompts needs {want} "
                         f"prompts; replay set {cfg.replay_set!r} has {len(rows)}: lower the fraction or --max-prompts")
    return random.Random(cfg.seed).sample(rows, want)


@torch.no_grad()
def disagreement(pair: TeacherStudent, examples: list[Example], batch_size: int = 16, chunk: int = 256) -> list[float]:
    """Mean KL(teacher ‖ student) per token along each example's answer (nats/token), in order:
    the held-out KL of ``engine.heldout_kl``, per answer instead of pooled."""
    model = pair.model
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        hs, ht, _ = pair.hidden(batch)
        kl = torch.cat([kl_per_token(pair.lm_head(ht[i:i + chunk]), pair.lm_head(hs[i:i + chunk]))
                        for i in range(0, len(hs), chunk)])
        out += [float(part.mean()) for part in kl.split([len(ex.answer) for ex in batch])]
    model.train(was_training)
    return out


def rebake_mix(examples: list[Example], scores: list[float], cfg: TrainConfig) -> list[Example]:
    """The most changed ``rebake_share`` of the examples, highest disagreement first, with a random
    pick of the others making up ``rebake_replay`` of the mix spread evenly through it (the run's
    first epoch keeps this order: see train.Schedule)."""
    order = sorted(range(len(examples)), key=lambda i: -scores[i])
    n_changed = max(1, round(cfg.rebake_share * len(examples)))
    changed, rest = order[:n_changed], order[n_changed:]
    n_replay = min(len(rest), round(n_changed * cfg.rebake_replay / (1 - cfg.rebake_replay)))
    return interleave([examples[i] for i in changed], [examples[i] for i in random.Random(cfg.seed).sample(rest, n_replay)])


def interleave(first: list, second: list) -> list:
    """Both lists in their own order, ``second`` spread evenly through ``first``."""
    keyed = [((i + 0.5) / len(first), 0, x) for i, x in enumerate(first)] + \
            [((j + 0.5) / len(second), 1, x) for j, x in enumerate(second)]
    return [x for *_, x in sorted(keyed, key=lambda k: k[:2])]


def gauge_items(n: int) -> list:
    """``n`` items of the capability set taken in turn from each kind of question, the same every time."""
    if not n:
        return []
    from .capability import load_items
    from .robustness import spread

    return spread(load_items(), n)


def gauge(pair: TeacherStudent, items, teacher: bool = False) -> float:
    """Capability accuracy on ``items`` of the student (adapter on, no constitution) or of the teacher."""
    from .capability import score

    model = pair.model
    was_training = model.training
    model.eval()
    if teacher:
        with pair.teacher_mode():
            flags = score(model, pair.tokenizer, items, system=pair.system, examples=pair.examples)
    else:
        flags = score(model, pair.tokenizer, items)
    model.train(was_training)
    return sum(flags) / len(flags)


def accepted_texts(store, cfg: TrainConfig) -> list[tuple[str, str]]:
    """(prompt, final text) of the accepted samples of the constitution version; refuses when there are none."""
    samples = store.list_samples(constitution_id=cfg.constitution_id, status="accepted", owner=cfg.owner)
    rows = [(s["prompt"], s["final"]) for s in samples if s["split"] == "train" and s["final"].strip()]
    if not rows:
        raise TrainError(f"constitution version {cfg.constitution_id} has no accepted samples with text: "
                         "accept some in the Curate tab, or train on fresh teacher samples (--data prompts)")
    return rows[:cfg.max_prompts] if cfg.max_prompts else rows
