"""A job followed in a terminal: its progress as it goes, and a clean stop when the terminal goes.

    job = follow(store, job_id, say=print)   # returns the job once it is done, failed or cancelled

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
