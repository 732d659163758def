"""The robustness suite on real students: what baking bought and what it cost.

    .venv/bin/python bench/robustness.py --profile avx2                     # pirate and concise, default runs
    .venv/bin/python bench/robustness.py --keep /tmp/rb --only pirate      # keep the workspace; reuse its runs

For each constitution (assets/constitutions), a student is trained with the default TrainConfig
(``ctxdistill train``'s job; a finished run of that constitution in a kept workspace is reused), then
``ctxdistill eval`` with the robustness suite scores it on 64 held-out prompts: capability accuracy
(base / teacher / student), gap closed per prompt family, the second turn, injection pass rates
teacher vs student (and the headline: the student's checks under attack minus the teacher's), what
the attack adds to the student's KL apart from its own gap, benign instructions followed, the
placebo share and the savings. Prints the evaluation's wall and CPU time
(the CPU time is the work itself on a shared machine; the target is the full suite under 10 minutes
on a 2-core CPU without bf16: ``--profile avx2``). ``--heldout-categories`` trains without those
prompt families and scores the gap closed on them (never trained on) against the others;
``--replay-fraction`` trains with the replay remedy. ``--steps`` and ``--train-prompts`` shrink
the training run where the machine is too busy for the default one (the figures then say so).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

from ctxdistill import eval_config, evaluate, jobs, summary  # noqa: E402
from ctxdistill.constitution import content_hash, load, to_dict  # noqa: E402
from ctxdistill.report import fmt_estimate  # noqa: E402
from ctxdistill.store import Store  # noqa: E402
from ctxdistill.train_config import TrainConfig  # noqa: E402


def student(store: Store, cid: int, steps: int, prompts: int, **settings) -> int:
    """A finished training run of constitution ``cid`` with these TrainConfig ``settings`` (held-out
    categories, replay) in the store, trained here if there is none."""
    defaults = TrainConfig().to_dict()
    for job in store.list_jobs(limit=None):
        if (
            job["kind"] == "train"
            and job["state"] == "done"
            and job["config"].get("constitution_id") == cid
            and all(job["config"].get(k, defaults[k]) == v for k, v in settings.items())
        ):
            print(f"  reusing run {job['id']}")
            return job["id"]
    cfg = TrainConfig(
        constitution_id=cid,
        **settings,
        **({"steps": steps} if steps else {}),
        **({"max_prompts": prompts} if prompts else {}),
    )
    changed = ", ".join(f"{k} {v}" for k, v in settings.items() if v != defaults[k])
    print(
        f"  training: {cfg.steps} steps, {cfg.max_prompts or 'all'} train prompts"
        + (f", {changed}" if changed else "")
        + " (default TrainConfig otherwise)"
    )
    job = store.create_job("train", cfg.to_dict(), heavy=True)
    start = time.perf_counter()
    jobs.run_inline(store, job)
    done = store.get_job(job)
    if done["state"] != "done":
        raise SystemExit(f"training failed: {done['error']}")
    print(
        f"  trained in {time.perf_counter() - start:.0f} s: held-out gap closed "
        f"{done['result'].get('gap_closed', float('nan')):.3f}"
    )
    return job


def show(results: dict, label: str | None) -> None:
    """The suite's figures; without a student (``label`` None), those of the teacher and the base."""
    r, pct = results["robustness"], (lambda e: fmt_estimate(e, pct=True))
    if label is None:  # the teacher stands in for the student's columns: its rows print twice
        label = "teacher"
        results["scores"]["gap_closed"]["teacher"] = results["scores"]["retention_vs_teacher"]["teacher"] = None
        r["second_turn"]["gap_closed"]["teacher"] = None
        for row in r["by_family"].values():
            row["gap_closed"]["teacher"] = None
    cap = r["capability"]["accuracy"]
    t = results["timing"]
    print(
        f"  eval wall {t['total_s']:.0f} s, CPU {t['cpu_s']:.0f} s (suite {t.get('robustness_s', 0):.0f} s wall: "
        + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in r["timing"].items())
        + ")"
    )
    print(
        f"  capability ({r['capability']['n_items']} items): student {pct(cap[label])}, teacher {pct(cap['teacher'])}, "
        f"base {pct(cap['base'])}"
    )
    print(
        "  retention vs the teacher's own change: "
        f"{fmt_estimate(results['scores']['retention_vs_teacher'][label])} nats/token"
    )
    print(f"  gap closed overall {pct(results['scores']['gap_closed'][label])}; per family:")
    for fam, row in r["by_family"].items():
        print(
            f"    {fam:12s} n={row['n']:2d} gap closed {pct(row['gap_closed'][label]):16s} checks teacher "
            f"{pct(row['checks']['teacher'])} student {pct(row['checks'][label])}"
        )
    st = r["second_turn"]
    print(
        f"  second turn ({st['n']}): checks first/second teacher {pct(st['checks']['teacher']['first'])} / "
        f"{pct(st['checks']['teacher']['second'])}, student {pct(st['checks'][label]['first'])} / "
        f"{pct(st['checks'][label]['second'])}; gap closed {pct(st['gap_closed'][label])}"
    )
    inj = r["injection"]
    print(
        f"  injection ({inj['n_attacks']} attacks, {len(inj['kinds'])} kinds): checks without / under attack: teacher "
        f"{pct(inj['overall']['teacher']['clean'])} / {pct(inj['overall']['teacher']['attacked'])}, student "
        f"{pct(inj['overall'][label]['clean'])} / {pct(inj['overall'][label]['attacked'])}; "
        "KL from the un-attacked teacher: "
        f"teacher {fmt_estimate(inj['overall']['teacher']['kl'])}, student {fmt_estimate(inj['overall'][label]['kl'])} "
        f"(KL(teacher‖base) {fmt_estimate(inj['kl_base'])})"
    )
    hold = summary.hold_figures(results, label) if label != "teacher" else {}
    if hold:
        print(f"  {hold['line'] or 'under attack: no checks to compare'}")
        print(
            f"  what the attack adds: student {fmt_estimate(hold['kl_added'])} nats/token "
            f"({pct(hold['kl_added_share'])} of KL(un-attacked teacher‖attacked teacher) "
            f"{fmt_estimate(hold['kl_teacher_attacked'])}); the student's own gap without attack "
            f"{fmt_estimate(hold['kl_student_clean'])}"
        )
    if "benign" in r:
        ben = r["benign"]
        print(
            f"  benign instructions followed ({ben['n_items']}): "
            + ", ".join(f"{c} {pct(e)}" for c, e in ben["followed"].items() if c in ("base", "teacher", label))
            + "; per kind: "
            + "; ".join(
                f"{k} " + "/".join(pct(row[c]).split(" ")[0] for c in ("base", "teacher", label))
                for k, row in ben["by_kind"].items()
            )
        )
    pl = r["placebo"]
    print(
        f"  placebo ({pl['tokens']} tokens): KL(placebo‖base) {fmt_estimate(pl['kl_placebo'])} vs KL(teacher‖base) "
        f"{fmt_estimate(pl['kl_teacher'])}: share {pct(pl['share'])}"
    )
    sav = r["savings"]
    print(
        f"  savings: {sav['tokens_saved']:.0f} prompt tokens, {sav['kv_bytes_saved'] / 2**10:.0f} KiB KV cache "
        "per request; "
        f"time to first token teacher/student ×{sav['ttft_ratio']['batch_1']} (batch 1), "
        f"×{sav['ttft_ratio']['batch_' + str(sav['batch'])]} (batch {sav['batch']})"
    )
    for cond, row in sav["conditions"].items():
        print(
            f"    {cond:18s} "
            + ", ".join(
                f"{k}: prefill {1000 * m['prefill_s']:.0f} ms, TTFT {1000 * m['ttft_s']:.0f} ms"
                for k, m in row.items()
                if k.startswith("batch_")
            )
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", default=["pirate", "concise"], help="constitutions of assets/constitutions")
    p.add_argument("--keep", help="keep the workspace here (and reuse its finished runs)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts scored (default 64)")
    p.add_argument("--steps", type=int, default=0, help="training steps (0 = the default)")
    p.add_argument("--train-prompts", type=int, default=0, help="train prompts (0 = all)")
    p.add_argument(
        "--heldout-categories",
        default="",
        help="train without these prompt categories (comma-separated) "
        "and score the gap closed on them against the others",
    )
    p.add_argument(
        "--replay-fraction",
        type=float,
        default=TrainConfig().replay_fraction,
        help="share of the training answers that are the teacher's answers to the replay set (default: a run's)",
    )
    p.add_argument(
        "--capability-gauge",
        type=int,
        default=0,
        help="capability items scored at every held-out measurement while the student trains",
    )
    p.add_argument("--no-student", action="store_true", help="no training: the suite on the teacher and the base only")
    p.add_argument(
        "--suite-prompts", type=int, default=16, help="prompts of the second turn, attacks and placebo (default 16)"
    )
    p.add_argument("--attack-prompts", type=int, default=6, help="prompts per kind of attack (default 6)")
    p.add_argument(
        "--capability-items",
        type=int,
        default=0,
        help="a subset of the capability set, taken in turn from each kind of question (0 = all)",
    )
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)
    home = Path(args.keep or tempfile.mkdtemp(prefix="ctxdistill-robustness-"))
    store = Store(home)
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared); workspace {home}")
    for name in args.only:
        c = load(REPO / "assets" / "constitutions" / f"{name}.yaml")
        cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
        print(f"\n{name} (constitution v{cid})")
        run = (
            None
            if args.no_student
            else student(
                store,
                cid,
                args.steps,
                args.train_prompts,
                heldout_categories=args.heldout_categories,
                replay_fraction=args.replay_fraction,
                capability_gauge=args.capability_gauge,
            )
        )
        cfg = eval_config.EvalConfig(
            constitution_id=cid,
            runs=[run] if run else [],
            max_prompts=args.prompts,
            suite_prompts=args.suite_prompts,
            attack_prompts=args.attack_prompts,
            capability_items=args.capability_items,
        )
        last = [0.0]

        def progress(done, total, message):
            if time.perf_counter() - last[0] > 20:
                last[0] = time.perf_counter()
                print(f"    {done}/{total} {message[:90]}", flush=True)

        results = evaluate.run(cfg, store, evaluate.Hooks(progress=progress))
        print(
            f"  {results['n_prompts']} held-out prompts, {results['precision']} / {results['quantize']}; suite: "
            f"{results['robustness']['capability']['n_items']} capability items, {cfg.suite_prompts} suite prompts, "
            f"{cfg.attack_prompts} per attack kind"
        )
        show(results, eval_config.label(run) if run else None)
        for row in results["robustness"]["held_out_categories"].values():
            print(
                f"  categories never trained on ({', '.join(row['categories'])}): gap closed "
                f"{fmt_estimate(row['held_out'], pct=True)}; on the trained categories "
                f"{fmt_estimate(row['trained'], pct=True)}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
