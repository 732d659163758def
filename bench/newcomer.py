"""A newcomer's flow under load: does every job show progress, and does the time estimate hold?

    .venv/bin/python bench/newcomer.py                 # two busy processes beside the jobs
    .venv/bin/python bench/newcomer.py --busy 0        # an idle machine

On the embedded SmolLM2-135M with a constitution written here, in a fresh workspace: this machine
is calibrated (estimate.calibrate, as "Estimate the time" does), then a sampling job (12 prompts x 2
answers, as the newcomer ran it) and a short training run go through the job queue as the app
starts them (worker processes at a low priority), with ``--busy`` processes spinning beside them.
The store is read every 0.2 s. Printed per job: its wall time; the longest time its progress
(counter and message) did not change, from the worker's start and from its first progress report
(target: under 5 s); the predicted time and the ratio actual / predicted (target: within x1.5), or
the estimate's own "the machine is busy" note when the load is above the cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxdistill import constitution as cmod  # noqa: E402
from ctxdistill import estimate, jobs  # noqa: E402
from ctxdistill.generate import GenerateConfig  # noqa: E402
from ctxdistill.prompts import ensure_default_prompts, select_prompts  # noqa: E402
from ctxdistill.store import Store  # noqa: E402
from ctxdistill.train import TrainConfig  # noqa: E402

HAIKU = """name: haiku
principles:
  - id: lines
    text: Answer in three short lines, like a haiku.
  - id: nature
    text: Mention something from nature in every answer.
"""
POLL_S = 0.2


def watch(store: Store, job_id: int, timeout: float, trace: bool = False) -> dict:
    """Poll the job to its end: wall time, the longest stall from its start and from its first report
    (``trace``: print each change of its progress, with the seconds since the job was submitted)."""
    seen, started, first, last_change = None, time.monotonic(), None, time.monotonic()
    stall = stall_after_first = 0.0
    while True:
        job = jobs.get(store, job_id)
        now = time.monotonic()
        state = (job["progress_done"], job["progress_total"], job["message"])
        if state != seen:
            if trace:
                print(f"  {now - started:7.1f} s  {state[0]}/{state[1]}  {state[2]}", flush=True)
            stall = max(stall, now - last_change)
            if first is not None:
                stall_after_first = max(stall_after_first, now - last_change)
            if first is None and job["message"]:
                first = now
            seen, last_change = state, now
        if job["state"] not in ("queued", "running"):
            return {
                "state": job["state"],
                "wall_s": now - started,
                "stall_s": max(stall, now - last_change),
                "stall_after_first_s": stall_after_first,
                "error": job["error"],
            }
        if now - started > timeout:
            jobs.cancel(store, job_id)
            raise TimeoutError(f"job {job_id} still running after {timeout:.0f} s")
        time.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the jobs")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--trace", action="store_true", help="print every change of a job's progress")
    parser.add_argument("--only", choices=("generate", "train"), help="run one of the two jobs")
    args = parser.parse_args()

    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL)
        for _ in range(args.busy)
    ]
    home = Path(tempfile.mkdtemp(prefix="newcomer-"))
    store, submitted = Store(home), []
    try:
        ensure_default_prompts(store)
        c = cmod.parse(HAIKU, "yaml")
        cid = store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c), message="bench")
        time.sleep(5)  # the load average sees the busy processes
        t0 = time.monotonic()
        cal = estimate.calibrate(None, quantize="none", precision="auto", models_dir=os.environ["CTXDISTILL_MODELS"])
        print(f"calibration {time.monotonic() - t0:.0f} s: {cal.to_dict()}")
        note = estimate.load_note().strip()
        print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {note or 'the estimate does not flag it'}")

        gen = GenerateConfig(
            set_name="default",
            constitution_id=cid,
            limit=args.prompts,
            sampling={"n": args.samples, "max_new_tokens": args.tokens},
        )
        rows = len(select_prompts(store, "default", limit=args.prompts)) * (args.samples + 1)
        predicted = {"generate": cal.load_s + estimate.predict_sampling(cal, rows, args.tokens)}
        cfg = TrainConfig(constitution_id=cid, steps=args.steps, max_prompts=args.prompts, eval_every=8)
        n_train, n_heldout = estimate.run_size(cfg, store)
        predicted["train"] = estimate.predict_train(cal, cfg, n_train, n_heldout)["total"]
        results = {}
        for kind, config in (("generate", gen.to_dict()), ("train", cfg.to_dict())):
            if args.only not in (None, kind):
                continue
            submitted.append(jobs.submit(store, kind, config))
            results[kind] = watch(store, submitted[-1], args.timeout, args.trace)
            print(kind, results[kind])
        print(f"\n{'job':9} {'state':9} {'wall':>7} {'stall':>7} {'stall*':>7} {'predicted':>9} {'ratio':>6}")
        for kind, r in results.items():
            ratio = r["wall_s"] / predicted[kind]
            print(
                f"{kind:9} {r['state']:9} {r['wall_s']:6.0f}s {r['stall_s']:6.1f}s {r['stall_after_first_s']:6.1f}s "
                f"{predicted[kind]:8.0f}s {ratio:5.2f}x"
            )
        print("stall: from the worker's start; stall*: from its first progress report (target < 5 s)")
        print(f"estimate under this load: {'says it cannot say (busy)' if note else 'no busy note'}")
    finally:
        for job in submitted:  # an interrupted bench leaves no worker behind
            if jobs.get(store, job)["state"] in ("queued", "running"):
                jobs.cancel(store, job, grace_s=5)
        for p in busy:
            p.kill()


if __name__ == "__main__":
    main()
