"""Re-bake vs a run from scratch after one principle changes.

    .venv/bin/python bench/rebake.py                    # native profile
    .venv/bin/python bench/rebake.py --profile avx2     # as on a CPU without native bf16

On the embedded SmolLM2-135M with assets/constitutions/pirate.yaml (version 1), a default run
from scratch (``--max-prompts`` and ``--steps`` make every run smaller); then version 2 replaces one
principle ("call the user matey" -> "call the user captain") and two runs train on it, measured the
same way in the same process: a re-bake from the first run (``from_run``, ``--rebake-steps``
steps) and a default run from scratch. For each: the wall time from the start of ``train.run``
(model load and teacher sampling included: a run measures its start after sampling the held-out
answers, before the training answers and, for the re-bake, their ranking) to the first held-out
measurement with gap closed >= 0.8 on version 2's held-out prompts (the run's own 24, measured
every ``--eval-every`` steps; gap closed from the base model for both; also the CPU time of the
process, which the load of a shared machine does not inflate; the scratch run stops there).
Target: re-bake <= 40 % of scratch.

Gap closed over the whole constitution moves little when one principle of three changed, so both
version 2 runs also log the changed principle's baked share (``baked_gauge``, on by default for a
re-bake): the bench prints how long the re-bake takes to carry as much of it as the run from scratch
carries when it reaches 0.8. Then the check pass rates of the principles that did not change (arr,
voice), the first run's student vs the re-baked one on all 64 held-out prompts (sampled answers, as
``ctxdistill eval`` samples them): target within 5 points; next to them the version 2 teacher's, for
the changed principle's check.
"""

from __future__ import annotations

import argparse
import copy
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

from ctxdistill import train  # noqa: E402
from ctxdistill.constitution import content_hash, load, to_dict  # noqa: E402
from ctxdistill.store import Store  # noqa: E402

TARGET = 0.8
CHANGED = "baked:matey"  # the changed principle's baked share, logged by both version 2 runs


def version_two(c):
    """The pirate constitution with its "matey" principle replaced by "captain"."""
    c2 = copy.deepcopy(c)
    p = next(p for p in c2.principles if p.id == "matey")
    p.text = 'Ye always call the user "captain", arr!'
    p.critique = 'Does the assistant\'s last response call the user "captain"? Point out where it could.'
    p.revision = 'Rewrite the response so that it addresses the user as "captain" at least once.'
    p.check.value = "captain"
    return c2


def timed_run(store, cfg: train.TrainConfig, label: str, stop_at_target: bool = False) -> dict:
    """train.run as a job of the store; the wall and CPU time of each held-out measurement from the
    start (the CPU time of this process: on a shared machine it does not count the others' load)."""
    job = store.create_job("train", cfg.to_dict(), heavy=True)
    start, cpu, curve = time.perf_counter(), time.process_time(), []

    def log(values, step):
        if "gap_closed" in values:
            curve.append(
                (
                    time.perf_counter() - start,
                    time.process_time() - cpu,
                    step,
                    values["gap_closed"],
                    values.get(CHANGED),
                )
            )
            share = f", {CHANGED} {values[CHANGED]:.3f}" if CHANGED in values else ""
            print(
                f"  {label}: step {step:3d} at {curve[-1][0]:6.0f} s wall, {curve[-1][1]:6.0f} s CPU, "
                f"gap closed {values['gap_closed']:.3f}{share}",
                flush=True,
            )

    phases = []

    def progress(done, total, message):  # the wall time at which each phase of the run began
        phase = message.split(":")[0].split(" · ")[0].split(" (")[0]
        if not phase.startswith("step ") and (not phases or phases[-1][1] != phase):
            phases.append((time.perf_counter() - start, phase))
            print(f"  {label}: {phases[-1][0]:6.1f} s  {phase}", flush=True)

    reached = lambda: next((point for point in curve if point[3] >= TARGET), None)
    result = train.run(
        cfg,
        store,
        store.run_dir(job),
        train.Hooks(log=log, progress=progress, should_stop=lambda: stop_at_target and reached() is not None),
    )
    store.update_job(job, state="cancelled" if result["stopped"] else "done", result=result)
    return {"job": job, "result": result, "total_s": time.perf_counter() - start, "curve": curve, "reached": reached()}


def carried_as_much(run: dict, share: float):
    """The first measurement of ``run`` whose changed-principle share is at least ``share``."""
    return next((point for point in run["curve"] if point[4] is not None and point[4] >= share), None)


def pass_rates(store, constitution, runs: dict[str, int], precision_of: dict) -> dict[str, dict[str, float]]:
    """Check pass rate per principle of the teacher (``constitution`` in the system prompt) and of
    each run's student, on all held-out prompts."""
    from ctxdistill.adapters import load_adapter, run_adapter
    from ctxdistill.constitution import render
    from ctxdistill.engine import adapters_off, sample_rows
    from ctxdistill.eval_config import EvalConfig
    from ctxdistill.models import load_model

    prompts = [p["text"] for p in store.get_prompts("default", split="heldout")]
    model, tok = load_model(quantize=precision_of["quantize"], precision=precision_of["precision"])
    for name, job in runs.items():
        model = load_adapter(model, run_adapter(store, job), name=name)

    def rates(system, examples=()):
        ids = sample_rows(
            model, tok, [(system, p, i) for i, p in enumerate(prompts)], EvalConfig().sampling(), examples=examples
        )
        texts = [tok.decode(a, skip_special_tokens=True) for a in ids]
        return {p.id: sum(p.check.passes(t) for t in texts) / len(texts) for p in constitution.principles if p.check}

    with adapters_off(model):
        out = {"teacher": rates(render(constitution), constitution.examples)}
    for name in runs:
        model.set_adapter(name)
        out[name] = rates(None)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rebake-steps", type=int, default=30, help="optimiser steps of the re-bake (default 30)")
    p.add_argument("--eval-every", type=int, default=5, help="held-out measurement every N steps")
    p.add_argument("--max-prompts", type=int, default=0, help="train prompts of every run (default 0: all 192)")
    p.add_argument(
        "--steps", type=int, default=80, help="steps of the runs from scratch (default 80, the default run's)"
    )
    p.add_argument("--keep", help="keep the workspace here instead of a temporary directory")
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)
    store = Store(Path(args.keep or tempfile.mkdtemp(prefix="ctxdistill-rebake-")))
    c1 = load(REPO / "assets/constitutions/pirate.yaml")
    c2 = version_two(c1)
    v1 = store.save_constitution(c1.name, to_dict(c1), content_hash(c1))
    v2 = store.save_constitution(c2.name, to_dict(c2), content_hash(c2), parent_id=v1)
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared)")
    common = dict(max_prompts=args.max_prompts, eval_every=args.eval_every)
    first = timed_run(store, train.TrainConfig(constitution_id=v1, steps=args.steps, **common), "v1 from scratch")
    print(
        f"\nv1 from scratch: {first['total_s']:.0f} s, gap closed {first['result']['gap_closed']:.3f} "
        f"(kept step {first['result']['best_step']})"
    )
    rebaked = timed_run(
        store,
        train.TrainConfig(constitution_id=v2, from_run=first["job"], steps=args.rebake_steps, **common),
        "v2 re-bake",
    )
    print(f"\nv2 re-bake: {rebaked['result']['lineage']['text']}; {rebaked['result']['n_train']} training answers")
    # stopped once it reaches the target: only its time to it is needed
    scratch = timed_run(
        store,
        train.TrainConfig(constitution_id=v2, steps=args.steps, baked_gauge="matey", **common),
        "v2 from scratch",
        stop_at_target=True,
    )
    print()
    for label, r in (("re-bake", rebaked), ("scratch", scratch)):
        when = (
            f"{r['reached'][0]:.0f} s wall, {r['reached'][1]:.0f} s CPU (step {r['reached'][2]})"
            if r["reached"]
            else "not reached"
        )
        print(f"  {label:8s} gap closed >= {TARGET} at {when}; whole run {r['total_s']:.0f} s")
    if rebaked["reached"] and scratch["reached"]:
        for i, kind in ((0, "wall"), (1, "CPU")):
            ratio = rebaked["reached"][i] / scratch["reached"][i]
            print(
                f"  {kind} time to gap closed >= {TARGET}: re-bake / scratch = {ratio:.2f} (target <= 0.40: "
                f"{'met' if ratio <= 0.4 else 'not met'})"
            )
    share = scratch["reached"][4] if scratch["reached"] else None
    if share is not None:
        when = carried_as_much(rebaked, share)
        print(
            f"\n  the changed principle's baked share: scratch {share:.3f} when it reached {TARGET}; re-bake "
            f"{rebaked['curve'][0][4]:.3f} at its start, {rebaked['curve'][-1][4]:.3f} at its end"
        )
        if when:
            for i, kind in ((0, "wall"), (1, "CPU")):
                print(
                    f"  {kind} time to that share: re-bake {when[i]:.0f} s (step {when[2]}) / scratch "
                    f"{scratch['reached'][i]:.0f} s = {when[i] / scratch['reached'][i]:.2f}"
                )
        else:
            print(f"  the re-bake did not carry that share in {args.rebake_steps} steps")
    rates = pass_rates(store, c2, {"v1": first["job"], "rebake": rebaked["job"]}, first["result"])
    print(
        f"\ncheck pass rates of version 2's principles on {len(store.get_prompts('default', split='heldout'))} "
        'held-out prompts (the matey principle\'s check is "captain" now)'
    )
    for name, row in rates.items():
        print(f"  {name:8s} " + ", ".join(f"{k} {v:.0%}" for k, v in row.items()))
    for pid in ("arr", "voice"):
        delta = 100 * (rates["rebake"][pid] - rates["v1"][pid])
        print(
            f"  unchanged principle {pid}: re-bake - v1 = {delta:+.0f} points (target within 5: "
            f"{'met' if abs(delta) <= 5 else 'not met'})"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
