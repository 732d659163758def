"""A job followed in a terminal: its progress as it goes, a clean stop when the terminal goes, and
its result in one line.

    job = follow(store, job_id, say=print)   # returns the job once it is done, failed or cancelled
    print(summary(job["kind"], job["result"]))  # its result in one line

Ctrl-C, SIGTERM (``timeout``) and SIGHUP (a closed terminal) cancel the followed job: what it
finished is kept, it can be resumed, and its worker is gone when ``follow`` raises
KeyboardInterrupt. Without this the command would die and leave the worker running with nobody
waiting for it (``--detach`` is the way to leave a job running).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from . import jobs

STOP_GRACE_S = 60.0  # a job checks for cancel between steps; a step of a slow CPU can take this long
FINISHED = ("done", "failed", "cancelled")


@contextlib.contextmanager
def interrupted_by(*signals):
    """Within it, each of ``signals`` does what Ctrl-C does: raise KeyboardInterrupt."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def follow(store, job_id: int, say=lambda message: None) -> dict:
    """Wait for job ``job_id`` to finish, calling ``say`` with each new progress message; on Ctrl-C,
    SIGTERM or SIGHUP stop it (``stop``) and raise KeyboardInterrupt."""
    last = None
    try:
        with interrupted_by(signal.SIGTERM, signal.SIGHUP):
            while (job := jobs.get(store, job_id))["state"] not in FINISHED:
                if job["message"] != last:
                    say(f"job {job_id}: {job['message'] or job['state']}")
                    last = job["message"]
                time.sleep(0.5)
    except KeyboardInterrupt:
        stop(store, job_id)
        raise
    return job


def stop(store, job_id: int) -> None:
    """Cancel a followed job and wait until its worker stopped (killed after the grace period). A
    second interrupt while waiting kills it at once; either way no worker is left behind."""
    print(f"stopping job {job_id} (it stops at its next step; interrupt again to kill it now)…", file=sys.stderr)
    jobs.cancel(store, job_id, grace_s=STOP_GRACE_S)
    try:
        with interrupted_by(signal.SIGTERM, signal.SIGHUP):
            job = jobs.wait(store, job_id, timeout=STOP_GRACE_S + 10)
    except (KeyboardInterrupt, TimeoutError):
        jobs.cancel(store, job_id, grace_s=0)  # the grace is over: refresh kills the worker
        time.sleep(0.01)
        jobs.refresh(store)
        job = store.get_job(job_id)
    # the worker marks its job before it exits: wait for the process too, so none is left behind
    deadline = time.monotonic() + 10
    while job["pid"] and jobs.worker_alive(job["pid"], job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    if job["pid"] and jobs.worker_alive(job["pid"], job_id):
        jobs.kill_worker(job["pid"], job_id)
    print(f"job {job_id} {job['state']}: {job['message']}; resume it to finish the rest", file=sys.stderr)


def summary(kind: str, result: dict) -> str:
    """A finished job's result in one line, as the command that followed it prints it."""
    return SUMMARIES[kind](result)


def _generate(r: dict) -> str:
    return (
        f"{r['prompts']} prompts ({r['answered_now']} answered now, {r['samples_written']} samples, "
        f"{r['tokens_per_s']} tokens/s); flags: {r['flags']}"
    )


def _revise(r: dict) -> str:
    return f"{r['samples']} samples, {r['rounds_done_now']} rounds done now; flags: {r['flags']}"


def _train(r: dict) -> str:
    return (
        f"run {r['run']}: held-out KL {r['heldout_kl_before']:.4f} -> {r['heldout_kl_after']:.4f} nats/token "
        f"(gap closed {r['gap_closed']:.0%}, kept step {r['best_step']}); adapter {r['adapter']}"
        + (f"; {r['lineage']['text']}" if r.get("lineage") else "")
    )


def _evaluate(r: dict) -> str:
    """One line per scored run: the first run's figures, then each other run's."""
    return "\n".join(_student(r["eval_id"], x) for x in (r, *r.get("other_runs", ())))


def _student(eval_id: int, r: dict) -> str:
    checks = "; ".join(
        f"{pid}: " + ", ".join(f"{c} {v:.0%}" for c, v in row.items()) for pid, row in r["checks"].items()
    )
    ret = r["retention"]
    capability = " vs ".join(f"{c} {v:.0%}" for c, v in reversed((r.get("capability") or {}).items()))
    return (
        f"eval {eval_id} ({r['run']}, {r['n_prompts']} held-out prompts, {r['seconds']:.0f} s): "
        f"{f'capability: {capability}; ' if capability else ''}KL(teacher‖base) {r['kl_base']:.4f} -> "
        f"KL(teacher‖student) {r['kl_student']:.4f} nats/token, "
        f"gap closed {r['gap_closed']:.0%} (95% CI {r['intervals']['gap_closed'][0]:.0%} to "
        f"{r['intervals']['gap_closed'][1]:.0%}); retention: NLL of base answers {ret['nll_base']:.3f} -> "
        f"{ret['nll_student']:.3f}; checks: {checks or 'none'}"
        + (f"; {r['every_check']['line']}" if (r.get("every_check") or {}).get("line") else "")
        + (f"; {r['hold']['line']}" if (r.get("hold") or {}).get("line") else "")
    )


def _prefs(r: dict) -> str:
    agreement = r["agreement_with_checks"]
    return (
        f"pairs made from {r['prompts']} prompts: "
        + ", ".join(f"{n} {s}" for s, n in r["pairs"].items())
        + (f"; AI feedback agreed with the checks on {agreement['value']:.0%} of {agreement['n']}" if agreement else "")
    )


def _dpo(r: dict) -> str:
    return (
        f"run {r['run']}: {r['lineage']['text']}, {r['n_train']} pairs, {r['step']} steps; dpo loss "
        f"{r.get('dpo_loss', float('nan')):.4f}, reward margin {r.get('reward_margin', float('nan')):.3f}; held-out KL "
        f"to the teacher {r['heldout_kl_start']:.4f} -> {r['heldout_kl_after']:.4f}; adapter {r['adapter']}"
    )


SUMMARIES = {
    "generate": _generate,
    "revise": _revise,
    "train": _train,
    "evaluate": _evaluate,
    "prefs": _prefs,
    "dpo": _dpo,
}
