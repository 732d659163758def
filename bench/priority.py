"""What the worker priority (CTXDISTILL_WORKER_PRIORITY) does: app latency while a job computes,
and how far the job gets while other programs keep every core busy.

    .venv/bin/python bench/priority.py                       # idle, low (the local default), normal
    .venv/bin/python bench/priority.py --modes low --seconds 10

For each mode the app runs as `ctxdistill serve`, and a job that computes as training does (torch
matmuls on every core) runs in a worker at that priority. First window: a client calls the light
`/versions` endpoint back to back; p50/p95 latency. Second window: one CPU hog per core at normal
priority (other programs on a busy machine) next to the job; the job's work per second there and
next to the idle app (the job reports its work through its progress counter).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

from ctxdistill import jobs  # noqa: E402
from ctxdistill.store import Store  # noqa: E402
from tests.e2e.conftest import start_app, stop_app  # noqa: E402


def burn(ctx, config):
    """The job: 256x256 float32 matmuls until cancelled, its count as progress."""
    import torch

    a, n = torch.randn(256, 256), 0
    while not ctx.should_stop():
        for _ in range(50):
            a = torch.tanh(a @ a)
        n += 50
        ctx.progress(n, 0, "burning")


def work(store: Store, job_id: int, seconds: float) -> float:
    """The job's matmuls per second over a window."""
    start = store.get_job(job_id)["progress_done"]
    time.sleep(seconds)
    return (store.get_job(job_id)["progress_done"] - start) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["idle", "low", "normal"])
    parser.add_argument("--seconds", type=float, default=20.0)
    add_profile_flag(parser)
    args = parser.parse_args()
    apply_profile(args)
    from gradio_client import Client

    rows = []
    for mode in args.modes:
        home = Path(tempfile.mkdtemp(prefix=f"ctxdistill-priority-{mode}-"))
        os.environ["CTXDISTILL_WORKER_PRIORITY"] = mode
        proc, url = start_app(home, env={"CTXDISTILL_WORKER_PRIORITY": mode})
        store = Store(home)
        try:
            client = Client(url, verbose=False)
            job_id = jobs.submit(store, "bench.priority:burn", {})
            while store.get_job(job_id)["progress_done"] == 0:
                time.sleep(0.2)
            time.sleep(2)  # torch's threads started
            alone = work(store, job_id, args.seconds / 2)
            latencies, deadline = [], time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                client.predict(api_name="/versions")
                latencies.append((time.perf_counter() - t0) * 1000)
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in os.sched_getaffinity(0)]
            try:
                busy = work(store, job_id, args.seconds)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            jobs.cancel(store, job_id)
            jobs.wait(store, job_id, timeout=60)
            q = statistics.quantiles(latencies, n=20)
            rows.append((mode, q[9], q[18], len(latencies), alone, busy))
        finally:
            stop_app(proc)
    print(f"{args.seconds:.0f} s windows, {len(os.sched_getaffinity(0))} cores")
    print("mode    /versions p50    p95   calls   job's matmuls/s: next to the app   next to a CPU hog per core")
    for mode, p50, p95, n, alone, busy in rows:
        print(f"{mode:7} {p50:10.0f} ms {p95:6.0f} ms {n:6d}   {alone:28.0f}   {busy:20.0f}")


if __name__ == "__main__":
    main()
