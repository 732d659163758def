"""The RL-CAI stage end to end on the embedded model, and our DPO loop against TRL's DPOTrainer.

    nice .venv/bin/python bench/prefs.py                          # pirate, concise and plain
    nice .venv/bin/python bench/prefs.py --constitution librarian --no-trl   # a constitution never tuned on
    nice .venv/bin/python bench/prefs.py --constitution pirate --json
    nice .venv/bin/python bench/prefs.py --constitution pirate --dpo "" --dpo "anchor=1"
    nice .venv/bin/python bench/prefs.py --constitution pirate --no-trl --second-round "steps=20" --profile avx2

Per constitution, in a fresh workspace, with default settings: a distillation run; the pairs job
from its student (checks, AI feedback, so that the judge's agreement with the checks is measured,
and user instructions); the default sources' pairs accepted (checks where the constitution has
checks, and instructions: see prefs.sources_for); a DPO run from the distilled run per --dpo
setting (several settings share the distilled run and the pairs, so they differ only by the
setting); with --second-round, a second pairs job (the default sources) from the first DPO run's
student and a DPO run from that run per setting, on the pairs of both rounds; then one evaluation
(the one the Compare tab runs) of the teacher, the distilled student and the preference-trained
students on held-out prompts.
It prints the issue's targets: checks passed (every check of the constitution on one answer) by the
DPO student minus the teacher's, in points with a paired bootstrap interval (target >= +10),
capability (target within 2 points of the teacher's), benign instructions followed where the
evaluation has them (target >= the teacher's - 5), the judge's agreement with the checks with its
interval (0.5 = chance), and the time of pairs + DPO (target <= 10 minutes on 2 cores; a second round's
time includes the first's; --profile avx2 measures it as on a CPU without native bf16). Then the
same pairs, the same start adapter and the same number of steps through TRL's DPOTrainer (the
PeftModel with its start adapter: TRL copies it as the "ref" adapter, one model in memory), and
the ratio of the seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CTXDISTILL_MODELS", str(ROOT / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

# the shipped examples and the constitutions written for the benches (never tuned on): make-it-hold's table
from hold import CONSTITUTIONS  # noqa: E402

PLAIN = {
    "name": "plain",
    "description": "Calm, short answers: no exclamation marks, at most 30 words.",
    "preamble": "You are a calm assistant.",
    "principles": [
        {"id": "calm", "text": "Never use exclamation marks.", "check": {"kind": "not_contains", "value": "!"}},
        {"id": "brief", "text": "Answer in at most 30 words.", "check": {"kind": "max_words", "value": "30"}},
    ],
}


def constitution(name: str) -> dict:
    from ctxdistill.constitution import load, to_dict

    return PLAIN if name == "plain" else to_dict(load(CONSTITUTIONS[name]))


def run_job(store, kind: str, config: dict) -> tuple[dict, float]:
    from ctxdistill import jobs

    job_id = store.create_job(kind, config, heavy=True)
    t0 = time.perf_counter()
    jobs.run_inline(store, job_id)
    job = store.get_job(job_id)
    if job["state"] != "done":
        raise SystemExit(f"{kind} job {job_id} {job['state']}: {job['error']}")
    return {"id": job_id, **job["result"]}, time.perf_counter() - t0


def points(est: dict) -> dict:
    """A difference of rates (the evaluation's paired estimate) in points."""
    return {"value": 100 * est["value"], "ci": [100 * x for x in est["ci"]]}


def dpo_run(store, name: str, start: dict, steps: int, setting: str, before_s: float, what: str = "") -> dict:
    """One DPO run from ``start`` with one --dpo setting; ``before_s``: the pairs' seconds (and any earlier
    round's) that its pairs + DPO time adds to."""
    run, dpo_s = run_job(store, "dpo", {"from_run": start["id"], "steps": steps, **parse(setting)})
    what = f"{what}{setting or 'defaults'}"
    print(
        f"[{name}] DPO run {run['id']} ({what}): {run['step']} steps in {dpo_s:.0f} s, "
        f"margin {run['reward_margin']:.3f}"
    )
    return {**run, "setting": what, "seconds": dpo_s, "pairs_plus_dpo_s": before_s + dpo_s}


def stage(name: str, args, trl: bool) -> dict:
    from dataclasses import replace

    from ctxdistill import prefs
    from ctxdistill.constitution import content_hash, from_dict
    from ctxdistill.eval_config import EvalConfig
    from ctxdistill.evaluate import run as evaluate
    from ctxdistill.prompts import ensure_default_prompts
    from ctxdistill.store import Store
    from ctxdistill.train_config import TrainConfig

    home = Path(tempfile.mkdtemp(prefix=f"bench-prefs-{name}-"))
    store = Store(home)
    ensure_default_prompts(store)
    content = constitution(name)
    c = from_dict(content)
    cid = store.save_constitution(content["name"], content, content_hash(c))
    distilled, distill_s = run_job(
        store, "train", TrainConfig(constitution_id=cid, steps=args.train_steps, max_prompts=args.prompts).to_dict()
    )
    print(f"[{name}] distilled run {distilled['id']}: gap closed {distilled['gap_closed']:.2f} in {distill_s:.0f} s")
    pairs_cfg = prefs.PrefsConfig(
        constitution_id=cid,
        from_run=distilled["id"],
        sources="checks,feedback,instructions",
        limit=args.prompts,
        **({"answers": args.answers} if args.answers else {}),
        **({"instruction_share": args.instruction_share} if args.instruction_share is not None else {}),
    )
    made, prefs_s = run_job(store, "prefs", pairs_cfg.to_dict())
    default = prefs.sources_for(prefs.PrefsConfig(), prefs.curate.principle_checks(c))
    accepted = [p["id"] for p in store.list_pairs(constitution_id=cid) if p["source"] in default]
    store.set_pairs_status(accepted, "accepted")
    print(f"[{name}] pairs {made['pairs']} in {prefs_s:.0f} s; accepted {len(accepted)} ({', '.join(default)})")
    tuned = [dpo_run(store, name, distilled, args.dpo_steps, setting, prefs_s) for setting in args.dpo or [""]]
    if args.second_round:
        first, before = tuned[0], {p["id"] for p in store.list_pairs(constitution_id=cid)}
        _, prefs2_s = run_job(store, "prefs", replace(pairs_cfg, from_run=first["id"], sources="auto").to_dict())
        new = [p["id"] for p in store.list_pairs(constitution_id=cid) if p["id"] not in before]
        store.set_pairs_status(new, "accepted")
        print(f"[{name}] second round: {len(new)} pairs from DPO run {first['id']} in {prefs2_s:.0f} s")
        what = f"round 2 from run {first['id']}, "
        before_s = first["pairs_plus_dpo_s"] + prefs2_s
        tuned += [dpo_run(store, name, first, args.dpo_steps, s, before_s, what) for s in args.second_round]
    t0 = time.perf_counter()
    results = evaluate(
        EvalConfig(
            constitution_id=cid,
            runs=[distilled["id"], *(t["id"] for t in tuned)],
            influence_prompts=0,
            max_prompts=args.eval_prompts,
            robustness=args.robustness,
        ),
        store,
    )
    eval_s = time.perf_counter() - t0
    labels = [r["label"] for r in results["runs"]]
    every = results["scores"]["every_check"]
    suite = results.get("robustness") or {}
    capability = (suite.get("capability") or {}).get("accuracy", {})
    benign = suite.get("benign") or {}
    out = {
        "constitution": name,
        "n_heldout": len(results["prompts"]),
        "checks_passed": {cond: every["passed"][cond] for cond in ("teacher", *labels)},
        "distilled_minus_teacher_points": points(every["vs_teacher"][labels[0]]),
        "capability": {k: v for k, v in capability.items() if k in ("teacher", *labels)},
        "benign": {k: v for k, v in (benign.get("followed") or {}).items() if k in ("teacher", *labels)},
        "gap_closed": {lab: results["scores"]["gap_closed"][lab]["value"] for lab in labels},
        "agreement_with_checks": made["agreement_with_checks"],
        "pairs": made["pairs"],
        "accepted": len(accepted),
        "seconds": {"distill": distill_s, "pairs": prefs_s, "eval": eval_s},
        "dpo": [
            {
                "setting": t["setting"],
                "label": label,
                "run": t["id"],
                "minus_teacher_points": points(every["vs_teacher"][label]),
                "seconds": t["seconds"],
                "pairs_plus_dpo_s": t["pairs_plus_dpo_s"],
            }
            for t, label in zip(tuned, labels[1:])
        ],
        "runs": {"distilled": distilled["id"]},
        "labels": labels,
        "workspace": str(home),
    }
    if trl:
        out["trl"] = against_trl(store, distilled["id"], cid, args.trl_steps)
    store.close()
    return out


def against_trl(store, run_id: int, cid: int, steps: int) -> dict:
    """Seconds per DPO step, ours (the reference computed once, included) vs TRL's DPOTrainer, on the same
    accepted pairs from the same start adapter, batch 4, beta 0.1, lr 2e-4, fp32 on the CPU."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from ctxdistill import dpo
    from ctxdistill.adapters import load_adapter, run_adapter
    from ctxdistill.engine import TeacherStudent
    from ctxdistill.models import load_model
    from ctxdistill.train import Hooks

    pairs = store.list_pairs(constitution_id=cid, status="accepted")
    cfg = dpo.DPOConfig(from_run=run_id, steps=steps, eval_every=0, checkpoint_every=0)
    times = {}
    base, tok = load_model(quantize="none", precision="fp32")
    for p in base.parameters():
        p.requires_grad_(False)
    model = load_adapter(base, run_adapter(store, run_id), trainable=True)
    pair = TeacherStudent(model, tok, "")
    data = dpo.encode_pairs(tok, pairs, cfg.max_tokens)
    t0 = time.perf_counter()
    dpo.train_dpo(cfg, pair, data, [], Path(tempfile.mkdtemp()), Hooks(), {})
    times["ours_s_per_step"] = (time.perf_counter() - t0) / steps

    base, tok = load_model(quantize="none", precision="fp32")
    model = load_adapter(base, run_adapter(store, run_id), trainable=True)
    rows = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    args = TRLConfig(
        output_dir=tempfile.mkdtemp(),
        beta=cfg.beta,
        learning_rate=cfg.lr,
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        max_length=256,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trainer.train()
    times["trl_s_per_step"] = (time.perf_counter() - t0) / steps
    times["trl_over_ours"] = times["trl_s_per_step"] / times["ours_s_per_step"]
    times["steps"] = steps
    return times


def pct(est) -> str:
    return f"{est['value']:.0%} [{est['ci'][0]:.0%}, {est['ci'][1]:.0%}]" if est else "n/a"


def parse(setting: str) -> dict:
    """ "beta=0.2,anchor=1" -> {"beta": 0.2, "anchor": 1.0}: DPO options for one run."""
    from ctxdistill.dpo import DPOConfig

    out = {}
    for part in filter(None, setting.split(",")):
        key, _, value = part.partition("=")
        kind = type(getattr(DPOConfig(), key.strip()))
        out[key.strip()] = value.strip().lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def report(r: dict) -> str:
    dist, cap, ben, agreement = r["labels"][0], r["capability"], r["benign"], r["agreement_with_checks"]

    def versus(figures: dict, label: str) -> str:
        return f"{pct(figures[label])} ({(figures[label]['value'] - figures['teacher']['value']) * 100:+.1f} points)"

    lines = [
        f"== {r['constitution']} ({r['n_heldout']} held-out prompts); pairs {r['pairs']}, accepted {r['accepted']} "
        f"in {r['seconds']['pairs']:.0f} s",
        f"teacher: checks {pct(r['checks_passed']['teacher'])}"
        + (f", capability {pct(cap['teacher'])}" if cap else "")
        + (f", benign followed {pct(ben['teacher'])}" if ben else " (benign not measured: --no-robustness)"),
        f"distilled: checks {pct(r['checks_passed'][dist])}"
        + (f", capability {versus(cap, dist)}" if cap else "")
        + (f", benign {versus(ben, dist)}" if ben else "")
        + f", gap closed {r['gap_closed'][dist]:.2f}",
    ]
    for d in r["dpo"]:
        label, points = d["label"], d["minus_teacher_points"]
        lines.append(
            f"DPO {d['setting']}: checks {pct(r['checks_passed'][label])}, beyond the teacher {points['value']:+.1f} "
            f"points [{points['ci'][0]:+.1f}, {points['ci'][1]:+.1f}] (target >= +10: "
            f"{'met' if points['value'] >= 10 else 'NOT met'})"
            + (f"; capability {versus(cap, label)} (target within 2)" if cap else "")
            + (f"; benign {versus(ben, label)} (target >= -5)" if ben else "")
            + f"; gap closed {r['gap_closed'][label]:.2f}; pairs + DPO {d['pairs_plus_dpo_s'] / 60:.1f} min "
            f"(target <= 10: {'met' if d['pairs_plus_dpo_s'] <= 600 else 'NOT met'})"
        )
    if agreement:
        lines.append(
            f"AI feedback agrees with the checks on {pct(agreement)} of {agreement['n']} pairs both judged"
            + (" (no better than chance)" if agreement["ci"][0] <= 0.5 else "")
        )
    else:
        lines.append("AI feedback: no pair judged by both the model and a check")
    if "trl" in r:
        t = r["trl"]
        lines.append(
            f"DPO step: ours {t['ours_s_per_step']:.2f} s, TRL DPOTrainer {t['trl_s_per_step']:.2f} s "
            f"(TRL / ours = {t['trl_over_ours']:.2f}, {t['steps']} steps)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--constitution", action="append", choices=(*CONSTITUTIONS, "plain"))
    parser.add_argument("--train-steps", type=int, default=80, help="distillation steps (the default run's)")
    parser.add_argument(
        "--answers", type=int, default=0, help="policy answers per prompt for the pairs (0 = the pairs job's default)"
    )
    parser.add_argument(
        "--instruction-share", type=float, help="instruction pairs: share of the prompts (default: the pairs job's)"
    )
    parser.add_argument("--dpo-steps", type=int, default=40, help="DPO steps (the default run's)")
    parser.add_argument("--prompts", type=int, default=0, help="train prompts for distillation and pairs (0 = all)")
    parser.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts scored (0 = all)")
    parser.add_argument(
        "--robustness", action=argparse.BooleanOptionalAction, default=True, help="the suite: capability, benign"
    )
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True, help="time TRL's DPOTrainer too")
    parser.add_argument("--trl-steps", type=int, default=8)
    parser.add_argument(
        "--dpo",
        action="append",
        metavar="SETTING",
        help='one DPO run per flag from the same distilled run, e.g. --dpo "" --dpo "anchor=1,beta=0.2" '
        "(default: one run with the defaults)",
    )
    parser.add_argument(
        "--second-round",
        action="append",
        metavar="SETTING",
        help="a second round: pairs from the first DPO run's student, then one DPO run from it per flag, on both "
        'rounds\' pairs, e.g. --second-round "steps=20"',
    )
    add_profile_flag(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    apply_profile(args)
    import torch

    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}", flush=True)
    out = []
    for name in args.constitution or ["pirate", "concise", "plain"]:
        r = stage(name, args, trl=args.trl and not out)  # TRL timed once
        out.append(r)
        print(json.dumps(r) if args.json else report(r), flush=True)


if __name__ == "__main__":
    main()
