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
* ``setup_data`` — a run's held-out and training answers (with the teacher's answers to follow-ups of
  a multi-turn run, hold.py), sampled once and kept for resumes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import hold
from .engine import Example, SamplingStopped, TeacherStudent, sample_answers
from .losses import kl_per_token
from .prompts import SHIPPED_SETS, ensure_default_prompts
from .safety import quote
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
                raise TrainError(
                    f"category {quote(c)} has no held-out prompts in prompt set {quote(cfg.prompt_set)} to score on"
                    f" (its categories: {', '.join(known) or 'none'})"
                )
        train = [r["text"] for r in rows if r["split"] == "train" and r["category"] not in held]
        heldout = [r["text"] for r in rows if r["split"] == "heldout" and r["category"] in held]
        if not train:
            raise TrainError(
                f"holding out {quote(', '.join(held))} leaves no train prompts in prompt set {quote(cfg.prompt_set)}"
            )
    else:
        train = [r["text"] for r in rows if r["split"] == "train"]
        heldout = [r["text"] for r in rows if r["split"] == "heldout"]
    if not heldout:
        raise TrainError(f"prompt set {quote(cfg.prompt_set)} has no held-out prompts to measure the student on")
    if not train and cfg.data == "prompts":
        raise TrainError(f"prompt set {quote(cfg.prompt_set)} has no train prompts")
    return (
        train[: cfg.max_prompts] if cfg.max_prompts else train,
        heldout[: cfg.eval_prompts] if cfg.eval_prompts else heldout,
    )


def replay_count(n_train: int, fraction: float) -> int:
    """How many replay prompts make up ``fraction`` of the mix next to ``n_train`` prompts."""
    return round(n_train * fraction / (1 - fraction))


def replay_prompts(store, cfg: TrainConfig, n_train: int) -> list[str]:
    """Prompts of ``cfg.replay_set`` (its train split) so that they are ``replay_fraction`` of the
    mix next to ``n_train`` prompts of the run's own set; a fixed random pick (the run's seed). A set
    smaller than that is gone through more than once, each time in a new order (every row gets an
    answer of its own); a shipped set is seeded into a workspace that lacks it."""
    if not cfg.replay_fraction:
        return []
    if cfg.replay_set in SHIPPED_SETS:
        ensure_default_prompts(store, cfg.owner)
    rows = [r["text"] for r in store.get_prompts(cfg.replay_set, split="train", owner=cfg.owner)]
    if not rows:
        raise TrainError(f"replay prompt set {quote(cfg.replay_set)} has no train prompts")
    want = replay_count(n_train, cfg.replay_fraction)
    rng, picked = random.Random(cfg.seed), []
    while len(picked) < want:
        picked += rng.sample(rows, min(len(rows), want - len(picked)))
    return picked


@torch.no_grad()
def disagreement(pair: TeacherStudent, examples: list[Example], batch_size: int = 16, chunk: int = 256) -> list[float]:
    """Mean KL(teacher ‖ student) per token along each example's answer (nats/token), in order:
    the held-out KL of ``engine.heldout_kl``, per answer instead of pooled."""
    model = pair.model
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        hs, ht, _ = pair.hidden(batch)
        kl = torch.cat(
            [
                kl_per_token(pair.lm_head(ht[i : i + chunk]), pair.lm_head(hs[i : i + chunk]))
                for i in range(0, len(hs), chunk)
            ]
        )
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
    return interleave(
        [examples[i] for i in changed], [examples[i] for i in random.Random(cfg.seed).sample(rest, n_replay)]
    )


def interleave(first: list, second: list) -> list:
    """Both lists in their own order, ``second`` spread evenly through ``first``."""
    keyed = [((i + 0.5) / len(first), 0, x) for i, x in enumerate(first)] + [
        ((j + 0.5) / len(second), 1, x) for j, x in enumerate(second)
    ]
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
        raise TrainError(
            f"constitution version {cfg.constitution_id} has no accepted samples with text: "
            "accept some in the Curate tab, or train on fresh teacher samples (--data prompts)"
        )
    return rows[: cfg.max_prompts] if cfg.max_prompts else rows


# --------------------------------------------------------------------------- a run's data


def setup_data(cfg: TrainConfig, store, pair: TeacherStudent, run_dir: Path, accelerator, hooks, phase):
    """(held-out answers, a function that returns the training answers, held-out probe sets by name):
    the teacher's, sampled once per run and kept in run_dir/data.json for resumes. The held-out ones
    come first, so that a run measures where it starts (a re-bake: the old student on the new version)
    before it samples what it trains on. The probes (hold.py) are the held-out answers under a training
    attack and the teacher's answers to a follow-up of held-out conversations. ``hooks``: train.Hooks;
    ``phase(name)``: the progress report of a sampling phase."""
    cache = run_dir / "data.json"
    once = replace(cfg, samples_per_prompt=1)
    if cache.is_file():
        data = json.loads(cache.read_text())
        heldout = [Example(**e) for e in data["heldout"]]
        probes = {"attacked": hold.attacked_probes(cfg, heldout)}
        probes["second_turn"] = [Example(**e) for e in data.get("second_turn", [])]
        return heldout, lambda: [Example(**e) for e in data["train"]], probes
    prompts, heldout_prompts = split_prompts(store, cfg)
    kept = lambda prompts, cfg, seed, part, name: (
        sample_kept(pair, prompts, cfg, seed, part, run_dir, accelerator, hooks, name, phase) if prompts else []
    )
    # one teacher sample per held-out prompt, from its own random stream
    heldout = kept(heldout_prompts, once, cfg.seed + 7919, "heldout", "sampling the teacher's held-out answers")
    follow_ups = hold.train_follow_ups(cfg.followup_set) if cfg.multiturn_share else []
    instructions = hold.train_instructions(cfg.instruction_set) if cfg.instruction_share else []
    probes = {
        "attacked": hold.attacked_probes(cfg, heldout),
        "second_turn": kept(
            hold.conversations(pair.tokenizer, heldout[: hold.SECOND_TURN_PROBES], follow_ups, 1.0, cfg.seed + 13),
            once,
            cfg.seed + 7927,
            "heldout_second_turn",
            "sampling the teacher's held-out second turns",
        ),
    }

    def training() -> list[Example]:
        tok = pair.tokenizer
        if cfg.data == "accepted":
            end = [tok.convert_tokens_to_ids(tok.eos_token)]
            texts = accepted_texts(store, cfg)
            train = first = [Example(p, tok.encode(text, add_special_tokens=False) + end) for p, text in texts]
            asked_of = [p for p, _ in texts]
        else:
            train = first = kept(prompts, cfg, cfg.seed, "train", "sampling the teacher's training answers")
            asked_of = prompts
            if cfg.from_run:
                hooks.progress(
                    0, cfg.steps, "ranking the train prompts by how much the new teacher disagrees with the old student"
                )
                train = rebake_mix(train, disagreement(pair, train, chunk=cfg.kl_chunk), cfg)
        replay = kept(
            replay_prompts(store, cfg, len(asked_of)),
            cfg,
            cfg.seed + 104729,
            "replay",
            "sampling the teacher's replay answers",
        )
        train = interleave(train, replay)
        # the teacher's answers to a follow-up of a share of the first answers (its own, or the accepted ones)
        second = kept(
            hold.conversations(tok, first, follow_ups, cfg.multiturn_share, cfg.seed + 17),
            once,
            cfg.seed + 7933,
            "second_turn",
            "sampling the teacher's answers to follow-ups",
        )
        # the teacher's answers to a share of the train prompts with a user instruction appended
        asked = kept(
            hold.instructed(asked_of, instructions, cfg.instruction_share, cfg.seed + 19),
            once,
            cfg.seed + 7937,
            "instructed",
            "sampling the teacher's answers to prompts with a user instruction",
        )
        train = interleave(interleave(train, second), asked)
        if accelerator is None or accelerator.is_main_process:
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "train": [asdict(e) for e in train],
                        "heldout": [asdict(e) for e in heldout],
                        "second_turn": [asdict(e) for e in probes["second_turn"]],
                    }
                )
            )
            tmp.replace(cache)
            (run_dir / "data.partial.json").unlink(missing_ok=True)
        return train

    return heldout, training, probes


def sample_kept(pair, prompts, cfg, seed, part, run_dir, accelerator, hooks, name, phase) -> list[Example]:
    """sample_answers with its answers kept in run_dir/data.partial.json after every batch; Stop is
    honoured between generation steps (one process), and a resume samples only the rest. ``name``:
    the phase's, for ``phase(name)``, its progress report."""
    from .jobs import Cancelled

    partial = run_dir / "data.partial.json"
    kept = json.loads(partial.read_text()) if partial.is_file() else {}
    mine = kept.get(part) if (kept.get(part) or {}).get("prompts") == prompts else None  # same prompts, same rows
    if mine:
        hooks.info(f"{len(mine['done'])} {part} answers kept from the previous attempt")
    single = accelerator is None or accelerator.num_processes == 1

    def keep(done):
        if single:
            tmp = partial.with_suffix(".tmp")
            tmp.write_text(json.dumps({**kept, part: {"prompts": prompts, "done": done}}))
            tmp.replace(partial)

    try:
        return sample_answers(
            pair,
            prompts,
            cfg,
            seed=seed,
            accelerator=accelerator,
            kept=mine and mine["done"],
            progress=phase(name),
            on_batch=keep,
            should_stop=hooks.should_stop if single else None,
        )
    except SamplingStopped as stopped:
        hooks.info(f"stopped while {name}: {len(stopped.done)} answers kept; resume samples the rest")
        raise Cancelled(str(stopped)) from None
