"""Job functions used by tests/test_jobs.py (run inside real worker processes)."""

import time

from ctxdistill.jobs import Cancelled


def count(ctx, config):
    """Count to n, one metric and one progress update per step.

    The metric 'i' at step i is the idempotent 'done' marker: a resumed run
    skips every step already logged. 'attempt' records which run did a step."""
    n, pause = int(config["n"]), float(config.get("sleep", 0.0))
    done = {m["step"] for m in ctx.store.get_metrics(ctx.job_id, "i")}
    if done:
        ctx.log.info("resuming: %d of %d steps already done", len(done), n)
    for i in range(n):
        if ctx.should_stop():
            raise Cancelled()
        if i in done:
            continue
        time.sleep(pause)
        ctx.log_metrics(i, {"i": float(i), "attempt": float(ctx.attempt)})
        ctx.progress(i + 1, n, f"step {i + 1}/{n}")
    ctx.set_result({"n": n, "attempt": ctx.attempt})


def heavy_count(ctx, config):
    """count, but flagged as needing the model: only one runs at a time."""
    count(ctx, config)


heavy_count.heavy = True


def fail(ctx, config):
    ctx.progress(0, 1, "about to fail")
    raise ValueError(config.get("message", "boom"))


def stubborn(ctx, config):
    """Ignores cancel requests, so only the kill after the grace period stops it."""
    for i in range(int(config.get("n", 600))):
        ctx.progress(i, 600, "busy")
        time.sleep(0.1)


def spin(ctx, config):
    """Burns `seconds` of CPU holding the GIL (a C loop, as in loading a model), with progress."""
    import resource

    cpu = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime
    start, total, shown = cpu(), float(config["seconds"]), -1
    while (used := cpu() - start) < total:
        sum(range(5_000_000))  # never lets go of the GIL: the heartbeat thread waits for it
        if int(10 * used / total) != shown:
            shown = int(10 * used / total)
            ctx.progress(shown, 10, "spinning")


def priority(ctx, config):
    """Reports the CPU priority of the worker's compute thread."""
    import os
    from pathlib import Path

    group = Path("/proc/self/autogroup")
    ctx.set_result(
        {
            "idle": os.sched_getscheduler(0) == os.SCHED_IDLE,
            "nice": os.nice(0),
            "group_nice": int(group.read_text().split()[-1]) if group.exists() else None,
        }
    )
