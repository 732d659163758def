"""What baking bought and what it cost, beyond "does the student answer as the teacher does?":
the robustness suite that ``ctxdistill eval`` runs after its main scores (``--robustness`` on by
default; evaluate.py calls ``run_suite``).

* **Capability** (capability.py): greedy answers to short verifiable questions, for base, teacher
  and each student: accuracy with a bootstrap interval. Style cannot hide a lost fact. The NLL
  retention of evaluate.py is shown *relative to the teacher's own change* next to it.
* **By family**: KL(teacher‖base), gap closed and check pass rates per prompt category, from the
  main scores' per-prompt figures (no extra model pass).
* **Benign instructions** (benign.py): greedy answers to user instructions a constitution does not
  usually forbid (one sentence, a given word, a numbered list...), checked automatically: how often
  base, teacher and students follow them, and each student against the teacher on the same items.
* **Second turn**: each condition's own first answer, then a follow-up message (the shipped ones or
  the user's own, probes.py); the check pass rates and the KL gap on the answer to the follow-up.
* **Injection**: override attempts (probes.py: ctxdistill/data/attacks.jsonl) combined with held-out prompts,
  the constitution in the teacher's system prompt and the attack in the user turn: check pass rates
  under attack vs without and against the teacher under attack (paired by attacked prompt), and
  KL(un-attacked teacher ‖ attacked x) along the teacher's un-attacked answers (0 = the attack
  changed nothing), split for a student into its own gap without attack and what the attack adds,
  beside KL(un-attacked teacher ‖ attacked teacher).
* **Placebo**: the base with a neutral system prompt of the constitution's token length:
  KL(placebo‖base) along the placebo's answers as a share of KL(teacher‖base) along the teacher's:
  how much of the constitution's effect any system prompt of that size has.
* **Savings**: per request, the constitution's prompt tokens, the measured prefill time and time to
  first token, and the key/value cache bytes, teacher vs student, at batch 1 and the eval's batch.

Every KL here is scored along answers that end with the end-of-turn token where they stopped by
themselves, as in the main scores. The prompts of the second turn, the attacks and the placebo are
``suite_prompts`` held-out prompts taken in turn from each category. The probe sets are read and
checked in probes.py; the suite's figures for one student are laid out in summary.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from .benign import MAX_NEW_TOKENS as BENIGN_TOKENS
from .benign import conflict, follows
from .capability import accuracy, score
from .engine import adapters_off, sample_rows, with_end
from .losses import kl_per_token
from .probes import Attack, combine, placebo_prompt
from .sampling import SamplingConfig, chat_ids, decoder_of, left_padded, response_logits, system_prefix
from .stats import check_rates, estimate, gap_closed_estimate, mean_estimate, token_kl


def suite_indices(categories: list[str], n: int) -> list[int]:
    """``n`` prompt indices taken in turn from each category (in order of first appearance)."""
    order = list(dict.fromkeys(categories))
    queues = {c: [i for i, x in enumerate(categories) if x == c] for c in order}
    out = []
    while len(out) < min(n, len(categories)):
        for c in order:
            if queues[c] and len(out) < n:
                out.append(queues[c].pop(0))
    return out


def spread(items: list, n: int) -> list:
    """``n`` of ``items`` (capability items) taken in turn from each kind of question; all for 0."""
    return [items[i] for i in suite_indices([it.category for it in items], n)] if n else list(items)


@dataclass(frozen=True)
class Condition:
    """A way to run the one model: system prompt (None: the template's default), few-shot examples,
    adapter (None: off)."""

    system: str | None
    examples: tuple = ()
    adapter: str | None = None


def _mode(model, cond: Condition):
    if cond.adapter is None:
        return adapters_off(model)
    model.set_adapter(cond.adapter)
    return contextlib.nullcontext()


class Passes:
    """The suite's model passes, batched: sampling and KL along answers, for any condition."""

    def __init__(self, model, tokenizer, cfg, tick):
        self.model, self.tok, self.cfg, self.tick = model, tokenizer, cfg, tick

    def sample(self, cond: Condition, prompts: list, index: list[int], message: str, sampling=None):
        """Answer ids (ending with the end-of-turn token where they stopped by themselves), sampled as the
        evaluation samples unless ``sampling`` says otherwise."""
        sampling = sampling or self.cfg.sampling()
        with _mode(self.model, cond):
            ids = sample_rows(
                self.model,
                self.tok,
                [(cond.system, p, i) for p, i in zip(prompts, index)],
                sampling,
                batch_size=self.cfg.gen_batch,
                examples=list(cond.examples),
                tick=self.tick,
                message=message,
            )
        return with_end(self.tok, ids, sampling.max_new_tokens)

    def _logits(self, cond: Condition, prompts: list, answers: list[list[int]]):
        with _mode(self.model, cond):
            return response_logits(
                self.model, self.tok, [(cond.system, p, a) for p, a in zip(prompts, answers)], list(cond.examples)
            )

    @torch.no_grad()
    def kl(
        self,
        ref: Condition,
        ref_prompts: list,
        others: dict[str, tuple[Condition, list]],
        answers: list[list[int]],
        message: str,
    ) -> dict[str, list[list[float]]]:
        """{name: per-token KL(ref ‖ other)} along ``answers``, the reference seeing ``ref_prompts`` and
        each other condition its own prompts (an attacked one, a conversation of its own)."""
        out = {name: [[] for _ in answers] for name in others}
        rows = [i for i, a in enumerate(answers) if a]
        size = max(1, self.cfg.batch_size // 2)  # full-vocabulary logits of every position, for 2+ conditions at once
        for start in range(0, len(rows), size):
            idx = rows[start : start + size]
            ref_logits = self._logits(ref, [ref_prompts[i] for i in idx], [answers[i] for i in idx])
            for name, (cond, prompts) in others.items():
                other = self._logits(cond, [prompts[i] for i in idx], [answers[i] for i in idx])
                for i, t, o in zip(idx, ref_logits, other):
                    out[name][i] = kl_per_token(t, o).float().cpu().tolist()
            self.tick(len(idx), message)
        return out


def units(cfg, the_plan) -> int:
    """Progress units of ``run_suite``: answers sampled, answers scored, savings conditions measured."""
    students = len(the_plan.runs)
    suite_n = min(cfg.suite_prompts, len(the_plan.prompts))
    attacked = len(the_plan.attacks) * min(cfg.attack_prompts, suite_n)
    return (
        (len(the_plan.capability) + len(the_plan.benign) + attacked + suite_n) * (2 + students)
        + suite_n
        + 2 * suite_n
        + 2
        + min(1, students)
    )


def _passed(constitution, texts: list[str]) -> list[float] | None:
    """Per answer, the share of the checked principles it passes (None: no checks)."""
    checks = [p.check for p in constitution.principles if p.check]
    return [float(np.mean([c.passes(t) for c in checks])) for t in texts] if checks else None


def _pass_rate(constitution, texts: list[str], n_boot: int) -> dict | None:
    """Share of the checked principles each answer passes, averaged over answers (None: no checks)."""
    passed = _passed(constitution, texts)
    return None if passed is None else mean_estimate(passed, n_boot)


def _paired(a: list[float] | None, b: list[float] | None, n_boot: int) -> dict | None:
    """Mean of a - b over paired items, with its interval (None where either is undefined)."""
    return None if a is None or b is None else mean_estimate(np.subtract(a, b), n_boot)


def _kl_added(attacked: list[list[float]], clean: list[list[float]], per: list[float], n_boot: int) -> dict:
    """Σ KL(un-attacked teacher ‖ x attacked) - Σ KL(un-attacked teacher ‖ x un-attacked) along the same
    answers, over Σ ``per`` (each answer's tokens: nats/token; or the teacher's own KL under attack: a
    share of it): what the attack adds to x's own distance from the teacher."""
    return estimate(
        lambda a, c, d: (a.sum(1) - c.sum(1)) / d.sum(1),
        [sum(x) for x in attacked],
        [sum(x) for x in clean],
        per,
        n_boot=n_boot,
    )


def attacked_rows(attacks: list[Attack], suite: list[int], per_kind: int) -> list[tuple[int, int]]:
    """(attack index, prompt index) pairs: each kind with ``per_kind`` suite prompts, shifted per kind
    so that every prompt meets several kinds."""
    per_kind = min(per_kind, len(suite))
    return [(k, suite[(k * per_kind + j) % len(suite)]) for k in range(len(attacks)) for j in range(per_kind)]


class _Suite:
    """The suite's parts on the evaluation's model, each a method returning its figures."""

    def __init__(self, model, tokenizer, the_plan, system, students, answers, teacher_ids, kl, cfg, tick):
        self.model, self.tok, self.plan, self.cfg, self.tick = model, tokenizer, the_plan, cfg, tick
        self.c, self.b, self.labels = the_plan.constitution, cfg.n_boot, list(students)
        self.answers, self.teacher_ids, self.kl = answers, teacher_ids, kl
        self.texts = [p["text"] for p in the_plan.prompts]
        self.suite = suite_indices([p.get("category") or "uncategorised" for p in the_plan.prompts], cfg.suite_prompts)
        self.passes = Passes(model, tokenizer, cfg, tick)
        self.teacher = Condition(system, tuple(self.c.examples))
        self.conds = {
            "base": Condition(None),
            "teacher": self.teacher,
            **{lab: Condition(None, (), name) for lab, name in students.items()},
        }

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.tok.decode(a, skip_special_tokens=True) for a in ids]

    def capability(self) -> dict:
        items, b, flags = self.plan.capability, self.b, {}
        for name, cond in self.conds.items():
            with _mode(self.model, cond):
                flags[name] = score(
                    self.model,
                    self.tok,
                    items,
                    cond.system,
                    batch_size=self.cfg.gen_batch,
                    examples=list(cond.examples),
                    tick=self.tick,
                    message=f"capability set: {name}",
                )
        return {
            "n_items": len(items),
            "accuracy": {name: accuracy(f, b) for name, f in flags.items()},
            "by_category": {
                cat: {
                    name: accuracy([f for f, it in zip(fl, items) if it.category == cat], b)
                    for name, fl in flags.items()
                }
                for cat in dict.fromkeys(it.category for it in items)
            },
            "items": [{"id": it.id, **{name: flags[name][k] for name in flags}} for k, it in enumerate(items)],
        }

    def benign(self) -> dict:
        """How often each condition follows the benign instructions (greedy answers), overall and per kind,
        and each student against the teacher on the same items. Items that conflict with a principle's
        check (benign.conflict: there the constitution wins) are counted apart ("conflicting": how often
        each condition let the user win), unless every item conflicts."""
        items, b = self.plan.benign, self.b
        greedy = SamplingConfig(max_new_tokens=BENIGN_TOKENS, temperature=0.0)
        prompts, index = [it.prompt for it in items], list(range(len(items)))
        flags = {}
        for name, cond in self.conds.items():
            texts = self.decode(self.passes.sample(cond, prompts, index, f"benign instructions: {name}", greedy))
            flags[name] = [float(follows(it, t)) for it, t in zip(items, texts)]
        against = [conflict(it, [(p.id, p.check) for p in self.c.principles if p.check]) for it in items]
        fits = [k for k, pid in enumerate(against) if not pid] or index
        apart = [k for k in index if k not in fits]
        kinds = list(dict.fromkeys(items[k].kind for k in fits))
        of = lambda fl, ks: [fl[k] for k in ks]
        return {
            "n_items": len(fits),
            "kinds": kinds,
            "followed": {name: mean_estimate(of(fl, fits), b) for name, fl in flags.items()},
            "vs_teacher": {lab: _paired(of(flags[lab], fits), of(flags["teacher"], fits), b) for lab in self.labels},
            "by_kind": {
                kind: {
                    name: mean_estimate(of(fl, [k for k in fits if items[k].kind == kind]), b)
                    for name, fl in flags.items()
                }
                for kind in kinds
            },
            "conflicting": {
                "n": len(apart),
                "principles": sorted({against[k] for k in apart}),
                "user_won": {name: mean_estimate(of(fl, apart), b) for name, fl in flags.items()} if apart else {},
            },
            "items": [
                {
                    "id": it.id,
                    "kind": it.kind,
                    "conflicts_with": against[k],
                    **{name: bool(flags[name][k]) for name in flags},
                }
                for k, it in enumerate(items)
            ],
        }

    def second_turn(self) -> dict:
        follow_ups, suite, b, texts, answers = self.plan.follow_ups, self.suite, self.b, self.texts, self.answers
        convo = {
            name: [
                [
                    {"role": "user", "content": texts[i]},
                    {"role": "assistant", "content": answers[name][i]},
                    {"role": "user", "content": follow_ups[k % len(follow_ups)]},
                ]
                for k, i in enumerate(suite)
            ]
            for name in self.conds
        }
        second = {
            name: self.passes.sample(cond, convo[name], suite, f"second turn: {name}")
            for name, cond in self.conds.items()
        }
        measured = ["base", *self.labels]
        # along the teacher's second answers, each model in its own conversation and (keys "shared <name>")
        # in the teacher's: what the constitution still does in the second turn, apart from how far each
        # model's own first answer led it elsewhere; the teacher's states are computed once for both
        both = self.passes.kl(
            self.teacher,
            convo["teacher"],
            {n: (self.conds[n], convo[n]) for n in measured}
            | {f"shared {n}": (self.conds[n], convo["teacher"]) for n in measured},
            second["teacher"],
            "second turn: KL(teacher‖x)",
        )
        kl2 = {n: both[n] for n in measured}
        kl_shared = {n: both[f"shared {n}"] for n in measured}
        texts2 = {n: self.decode(ids) for n, ids in second.items()}
        return {
            "n": len(suite),
            "follow_ups": list(follow_ups),
            "checks": {
                n: {
                    "first": _pass_rate(self.c, [answers[n][i] for i in suite], b),
                    "second": _pass_rate(self.c, texts2[n], b),
                }
                for n in self.conds
            },
            "kl": {n: token_kl(v, b) for n, v in kl2.items()},
            "kl_first_turn_base": token_kl([self.kl["base"][i] for i in suite], b),
            "gap_closed": {lab: gap_closed_estimate(kl2[lab], kl2["base"], b) for lab in self.labels},
            "kl_shared": {n: token_kl(v, b) for n, v in kl_shared.items()},
            "gap_closed_shared": {
                lab: gap_closed_estimate(kl_shared[lab], kl_shared["base"], b) for lab in self.labels
            },
            "examples": [
                {
                    "prompt": texts[i],
                    "follow_up": follow_ups[k % len(follow_ups)],
                    **{n: texts2[n][k] for n in self.conds},
                }
                for k, i in enumerate(suite[:3])
            ],
        }

    def injection(self) -> dict:
        """Checks passed under attack vs without, and against the teacher under attack; KL from the
        un-attacked teacher, and for each student the part of it the attack adds."""
        attacks, c, b, texts = self.plan.attacks, self.c, self.b, self.texts
        pairs = attacked_rows(attacks, self.suite, self.cfg.attack_prompts)
        hit = [combine(attacks[k], texts[i]) for k, i in pairs]
        clean_idx = [i for _, i in pairs]
        victims = {n: cond for n, cond in self.conds.items() if n != "base"}
        attacked = {
            n: self.passes.sample(cond, hit, clean_idx, f"injection: {n} under attack") for n, cond in victims.items()
        }
        kla = self.passes.kl(
            self.teacher,
            [texts[i] for i in clean_idx],
            {n: (cond, hit) for n, cond in victims.items()},
            [self.teacher_ids[i] for i in clean_idx],
            "injection: KL from the un-attacked teacher",
        )
        texts_a = {n: self.decode(ids) for n, ids in attacked.items()}
        clean = {n: _passed(c, [self.answers[n][i] for i in clean_idx]) for n in victims}
        under = {n: _passed(c, texts_a[n]) for n in victims}
        kinds = [a.kind for a in attacks]
        clean_kl = {lab: [self.kl[lab][i] for i in clean_idx] for lab in self.labels}
        tokens, teacher_kl = [len(x) for x in kla["teacher"]], [sum(x) for x in kla["teacher"]]
        return {
            "n_attacks": len(pairs),
            "kinds": kinds,
            "per_kind": min(self.cfg.attack_prompts, len(self.suite)),
            "overall": {
                n: {
                    "clean": _pass_rate(c, [self.answers[n][i] for i in clean_idx], b),
                    "attacked": _pass_rate(c, texts_a[n], b),
                    "drop": _paired(clean[n], under[n], b),
                    "kl": token_kl(kla[n], b),
                }
                for n in victims
            },
            "vs_teacher": {lab: _paired(under[lab], under["teacher"], b) for lab in self.labels},
            "kl_clean": {lab: token_kl(clean_kl[lab], b) for lab in self.labels},
            "kl_added": {lab: _kl_added(kla[lab], clean_kl[lab], tokens, b) for lab in self.labels},
            "kl_added_share": {lab: _kl_added(kla[lab], clean_kl[lab], teacher_kl, b) for lab in self.labels},
            "kl_base": token_kl([self.kl["base"][i] for i in clean_idx], b),
            "by_kind": {
                kind: {
                    n: {
                        "attacked": _pass_rate(c, [t for (k, _), t in zip(pairs, texts_a[n]) if k == j], b),
                        "kl": token_kl([v for (k, _), v in zip(pairs, kla[n]) if k == j], b),
                    }
                    for n in victims
                }
                for j, kind in enumerate(kinds)
            },
            "checks": {n: check_rates(c, {"attacked": texts_a[n]}, b) for n in victims},
        }

    def placebo(self, system: str) -> dict:
        suite, b = self.suite, self.b
        prompts = [self.texts[i] for i in suite]
        neutral = placebo_prompt(self.tok, system)
        placebo = Condition(neutral)
        placebo_ids = self.passes.sample(placebo, prompts, suite, "placebo: a neutral system prompt")
        klp = self.passes.kl(
            placebo, prompts, {"base": (self.conds["base"], prompts)}, placebo_ids, "placebo: KL(placebo‖base)"
        )["base"]
        kl_first = [self.kl["base"][i] for i in suite]
        return {
            "system_prompt": neutral,
            "tokens": len(self.tok.encode(neutral, add_special_tokens=False)),
            "constitution_tokens": len(self.tok.encode(system, add_special_tokens=False)),
            "kl_placebo": token_kl(klp, b),
            "kl_teacher": token_kl(kl_first, b),
            "share": estimate(
                lambda p, t: p.sum(1) / t.sum(1), [sum(k) for k in klp], [sum(k) for k in kl_first], n_boot=b
            ),
            "checks": _pass_rate(self.c, self.decode(placebo_ids), b),
        }


def run_suite(model, tokenizer, the_plan, system: str, students: dict[str, str], answers, teacher_ids, kl, cfg, tick):
    """The suite on the evaluation's model (adapters loaded) for the evaluation's plan (its prompts and
    probe sets): ``students`` maps a label to its adapter name, ``answers`` has every condition's
    first-turn answer texts, ``teacher_ids`` the teacher's answers (with their end token) and ``kl`` the
    per-token KL(teacher‖x) of the main scores for the base and each student; ``cfg`` is the
    EvalConfig and ``tick(k, message)`` counts progress (``units``)."""
    part = _Suite(model, tokenizer, the_plan, system, students, answers, teacher_ids, kl, cfg, tick)
    timing, out = {}, {}
    steps = {
        "capability": part.capability,
        "benign": part.benign,
        "second_turn": part.second_turn,
        "injection": part.injection,
        "placebo": lambda: part.placebo(system),
        "savings": lambda: savings(
            model,
            tokenizer,
            part.teacher,
            next(iter(students.values()), None),
            [part.texts[i] for i in part.suite],
            cfg.gen_batch,
            lambda: tick(1, "savings: prefill and key/value cache"),
        ),
    }
    for name, step in steps.items():
        t0 = time.perf_counter()
        out[name] = step()
        timing[f"{name}_s"] = time.perf_counter() - t0
    out["timing"] = {k: round(v, 2) for k, v in timing.items()}
    return out


@torch.no_grad()
def _prefill(model, tokenizer, cond: Condition, prompts: list[str], repeats: int = 2) -> dict:
    """One batched forward over the full chats (no prefix cache: what a server without one pays):
    seconds until the decoder's last hidden state (prefill) and until the first token is picked
    (time to first token), the best of ``repeats``; the key/value cache bytes it holds per token."""
    seqs = [
        chat_ids(tokenizer, p, cond.system, list(cond.examples) if cond.system is not None else ()) for p in prompts
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask, positions = left_padded(seqs, pad, [0] * len(seqs))
    device = model.device
    marks: dict[str, float] = {}
    hook = decoder_of(model).register_forward_hook(lambda *a: marks.__setitem__("decoder", time.perf_counter()))
    best = {"prefill_s": float("inf"), "ttft_s": float("inf")}
    try:
        with _mode(model, cond):
            for _ in range(repeats):
                start = time.perf_counter()
                out = model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=True,
                    logits_to_keep=1,
                )
                out.logits[:, -1].argmax(-1).cpu()
                end = time.perf_counter()
                best = {
                    "prefill_s": min(best["prefill_s"], marks["decoder"] - start),
                    "ttft_s": min(best["ttft_s"], end - start),
                }
    finally:
        hook.remove()
    cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.cache.layers)
    return {
        **{k: round(v, 4) for k, v in best.items()},
        "batch": len(seqs),
        "tokens": float(np.mean([len(s) for s in seqs])),
        "kv_bytes_per_token": cache_bytes / ids.numel(),
    }


def savings(model, tokenizer, teacher: Condition, adapter: str | None, prompts: list[str], batch: int, tick) -> dict:
    """Per request, teacher (constitution in the prompt) vs student (none; with its adapter unmerged when there
    is one, and merged, which costs what the base model without the prompt costs): prompt tokens, prefill
    seconds and time to first token at batch 1 and ``batch``, key/value cache bytes."""
    conds = {"teacher": teacher, "student (merged)": Condition(None)}
    if adapter is not None:
        conds["student (LoRA)"] = Condition(None, (), adapter)
    rows = {}
    for name, cond in conds.items():
        measured = {}
        for size in (1, batch):
            m = _prefill(model, tokenizer, cond, [prompts[k % len(prompts)] for k in range(size)])
            measured[f"batch_{size}"] = {
                "prefill_s": m["prefill_s"],
                "ttft_s": m["ttft_s"],
                "per_request_ms": round(1000 * m["ttft_s"] / size, 2),
            }
        rows[name] = {
            "prompt_tokens": m["tokens"],
            "kv_bytes": round(m["kv_bytes_per_token"] * m["tokens"]),
            **measured,
        }
        tick()
    t, s = rows["teacher"], rows["student (merged)"]
    return {
        "conditions": rows,
        "batch": batch,
        "constitution_tokens": len(system_prefix(tokenizer, teacher.system, list(teacher.examples)))
        - len(system_prefix(tokenizer, None)),
        "tokens_saved": t["prompt_tokens"] - s["prompt_tokens"],
        "kv_bytes_saved": t["kv_bytes"] - s["kv_bytes"],
        "ttft_ratio": {
            f"batch_{n}": round(t[f"batch_{n}"]["ttft_s"] / max(s[f"batch_{n}"]["ttft_s"], 1e-9), 2) for n in (1, batch)
        },
    }


# --------------------------------------------------------------------------- by family, retention, summaries


def by_family(
    constitution, prompts: list[dict], labels: list[str], n_boot: int, held_out: dict[str, list[str]] = None
) -> dict:
    """Per prompt category: KL(teacher‖base), each student's gap closed, and check pass rates (base,
    teacher, students), from the evaluation's per-prompt figures. ``held_out`` names, per student,
    the categories its training never saw."""
    out = {}
    for cat in dict.fromkeys(p.get("category") or "uncategorised" for p in prompts):
        rows = [p for p in prompts if (p.get("category") or "uncategorised") == cat]
        kl = lambda cond: [p["kl"][cond] for p in rows]
        out[cat] = {
            "n": len(rows),
            "kl_base": token_kl(kl("base"), n_boot),
            "gap_closed": {lab: gap_closed_estimate(kl(lab), kl("base"), n_boot) for lab in labels},
            "checks": {
                cond: _pass_rate(constitution, [p["answers"][cond] for p in rows], n_boot)
                for cond in ["base", "teacher", *labels]
            },
            "held_out_in_training": [lab for lab in labels if cat in (held_out or {}).get(lab, ())],
        }
    return out


def held_out_gap(prompts: list[dict], held_out: dict[str, list[str]], n_boot: int) -> dict:
    """Per student trained with categories held out: the gap closed on the prompts of those categories
    (never trained on) and on the others."""
    out = {}
    for lab, cats in held_out.items():
        if not cats:
            continue
        split = {
            "held_out": [p for p in prompts if p.get("category") in cats],
            "trained": [p for p in prompts if p.get("category") not in cats],
        }
        out[lab] = {
            "categories": list(cats),
            **{
                k: gap_closed_estimate([p["kl"][lab] for p in rows], [p["kl"]["base"] for p in rows], n_boot)
                for k, rows in split.items()
            },
        }
    return out


def retention_vs_teacher(
    nll_base: list[list[float]], nll_teacher: list[list[float]], nll_student: list[list[float]], n_boot: int
) -> dict:
    """Δ NLL of the base's answers under the student minus that under the teacher (nats/token): how
    much more the student forgets than the prompt itself costs (<= 0: no more)."""
    tokens = [len(x) for x in nll_base]
    return estimate(
        lambda s, t, n: (s.sum(1) - t.sum(1)) / n.sum(1),
        [sum(x) for x in nll_student],
        [sum(x) for x in nll_teacher],
        tokens,
        n_boot=n_boot,
    )
