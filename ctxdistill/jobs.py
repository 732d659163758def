"""Long work in a child process; the store is the contract between UI and worker.

    job_id = jobs.submit(store, "tests.jobfixtures:count", {"n": 5, "sleep": 0.1})
    jobs.wait(store, job_id, timeout=30)

A worker is `python -m ctxdistill.jobs JOB_ID --workspace HOME`, started in
its own session with its output in runs/<id>/worker.log. It writes progress,
metrics, heartbeats and its final state to the store; the UI only reads the
store (and calls refresh()), so it can re-attach after a reload.

A job function is `fn(ctx: JobContext, config: dict)`. It calls ctx.progress()
and checks ctx.should_stop() every step, and skips work already in the store,
so that resume() after a crash or a cancel picks up where it stopped.
Model-heavy kinds run one at a time per workspace; the rest queue by id.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from . import demo
from .cores import CoreShare
from .heartbeat import Heartbeat
from .safety import redact
from .store import TERMINAL_STATES, NotFound, Store, StoreError

# kind -> "module:function". A kind that itself contains ":" is an import path.
JOB_KINDS: dict[str, str] = {
    "generate": "ctxdistill.generate:generate_job",
    "revise": "ctxdistill.revise:revise_job",
    "train": "ctxdistill.train:train_job",
    "evaluate": "ctxdistill.evaluate:evaluate_job",
    "prefs": "ctxdistill.prefs:prefs_job",
    "dpo": "ctxdistill.dpo:dpo_job",
}

# Kinds that load the model. A function reached through an import path is heavy when it has a true `heavy` attribute.
HEAVY = {"generate", "revise", "train", "evaluate", "prefs", "dpo"}

# A heartbeat older than this only says the worker is starved of CPU (or stopped): whether it is
# dead is judged by its process (see worker_alive), since a busy machine, or a worker at idle
# priority waiting for its main thread to let go of the GIL, can delay a heartbeat for minutes.
STALE_AFTER_S = 15.0
QUEUE_POLL_S = 0.3
# A worker's compute runs below the app, so the people clicking through the app are not slowed
# down by a training job. "idle" is Linux's SCHED_IDLE (any waking thread preempts it at once:
# while anything else keeps the cores busy, the job makes no progress at all), "low" is nice 10
# (about a tenth of a contended core: the job always advances), "normal" is as the app. Locally
# the default is "low": what a user wants is a training run that finishes, even next to a busy
# browser; a public demo (many visitors, one machine) defaults to "idle". A worker runs in a
# session of its own (it outlives the app), and where the kernel groups CPU time by session
# (autogroup) that group's weight is lowered as well: otherwise the worker's session would get as
# much CPU as the app's, whatever its threads' policy.
WORKER_NICE = {"idle": 19, "low": 10, "normal": 0}  # of the session's autogroup, and of the thread without SCHED_IDLE


def worker_priority() -> str:
    """CTXDISTILL_WORKER_PRIORITY, or the default: "idle" in demo mode, "low" otherwise."""
    mode = os.environ.get("CTXDISTILL_WORKER_PRIORITY") or ("idle" if demo.enabled() else "low")
    if mode not in WORKER_NICE:
        raise StoreError(f"CTXDISTILL_WORKER_PRIORITY must be one of {', '.join(WORKER_NICE)}, not {mode!r}")
    return mode


def lower_priority() -> None:
    """Lower this thread's CPU priority (threads it starts later inherit it) and its session's."""
    mode = worker_priority()
    if not WORKER_NICE[mode]:
        return
    try:
        Path("/proc/self/autogroup").write_text(str(WORKER_NICE[mode]))
    except OSError:
        pass  # not Linux, or autogroup off: the thread's priority is enough
    if mode == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(WORKER_NICE[mode])


# Workers this process started, so refresh() can reap them (a dead child stays
# a zombie, which os.kill(pid, 0) still reports as alive).
_CHILDREN: dict[int, subprocess.Popen] = {}
_QUEUEING = threading.Lock()
_REPO_ROOT = Path(__file__).resolve().parent.parent


def eta_text(seconds: float) -> str:
    """Seconds left, as a progress line shows them: 45s, 3m 05s."""
    seconds = int(max(0.0, seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Meter:
    """The counter, rate and ETA of one phase of a job: ``line(done)`` gives "1200/6080 tokens · 41.0
    tokens/s · ETA 2m 01s". Work already done when the phase started (a resumed job) counts for the
    counter but not for the rate, and there is no rate nor ETA until the phase has run MIN_S seconds
    and done MIN_SHARE of what it had left (a phase's first moments measure nothing). ``after()``:
    the seconds of work the job has after this phase, or None where it cannot say; with it the line
    shows the whole job's ETA too. ``due()`` limits updates to one a second."""

    MIN_S = 3.0
    MIN_SHARE = 0.02

    def __init__(self, total: int, unit: str, done: int = 0, name: str = "", after=None):
        self.total, self.unit, self.first, self.name, self.after = total, unit, done, name, after
        self.started = time.monotonic()
        self._last = float("-inf")  # the first update is always due

    def due(self, done: int) -> bool:
        now = time.monotonic()
        if now - self._last >= 1.0 or done >= self.total:
            self._last = now
            return True
        return False

    def measured(self, done: int) -> bool:
        """Whether enough of the phase ran for its rate to mean something."""
        enough = max(1.0, self.MIN_SHARE * (self.total - self.first))
        return time.monotonic() - self.started >= self.MIN_S and done - self.first >= enough

    def rate(self, done: int) -> float | None:
        if not self.measured(done):
            return None
        return (done - self.first) / (time.monotonic() - self.started)

    def eta(self, done: int) -> float | None:
        if done >= self.total:
            return 0.0
        rate = self.rate(done)
        return (self.total - done) / rate if rate else None

    def line(self, done: int, extra: str = "") -> str:
        eta, rate = self.eta(done), self.rate(done)
        rest = self.after() if self.after is not None and eta is not None else None
        parts = [
            f"{self.name + ': ' if self.name else ''}{done}/{self.total} {self.unit}",
            *([extra] if extra else []),
            f"{rate:.1f} {self.unit}/s" if rate is not None else "",
            f"ETA {eta_text(eta)}" if eta is not None and done < self.total else "",
            f"job ETA {eta_text(eta + rest)}" if rest is not None else "",
        ]
        return " · ".join(p for p in parts if p)


class Cancelled(Exception):
    """Raised by a job function  to stop early; the job ends 'cancelled'."""


class JobContext:
    """What a job function gets: the store, its id and config, a run directory and a log."""

    def __init__(self, store: Store, job_id: int, config: dict, attempt: int = 1, heartbeat: Heartbeat | None = None):
        self.store = store
        self.job_id = job_id
        self.config = config
        self.attempt = attempt  # 1 on the first run, 2 after one resume, ...
        self.run_dir = store.run_dir(job_id)  # this job's own: never one another database left
        self.log = logging.getLogger(f"ctxdistill.job.{job_id}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handler = logging.FileHandler(self.run_dir / "log.txt", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._handler)
        self._stop = False
        self.cores = CoreShare()
        self.heartbeat = heartbeat

    def progress(self, done: int, total: int, message: str = "") -> None:
        """The counter and line; from the computing thread, so it fits its threads to the free cores."""
        self.cores.fit(self.log)
        if self.heartbeat:  # first: a heartbeat writing its loading line finishes before this line is written
            self.heartbeat.said(message)
        self.store.update_job(self.job_id, progress_done=int(done), progress_total=int(total), message=message)

    def should_stop(self) -> bool:
        """True once a cancel was requested. Cheap: one indexed read."""
        if not self._stop:
            self._stop = bool(self.store.get_job(self.job_id)["cancel_requested"])
        return self._stop

    def log_metrics(self, step: int, values: dict) -> None:
        self.store.log_metrics(self.job_id, step, values)

    def set_result(self, result: dict) -> None:
        self.store.update_job(self.job_id, result=result)

    def close(self) -> None:
        self.cores.restore()
        self.log.removeHandler(self._handler)
        self._handler.close()


# --------------------------------------------------------------------------- starting jobs


def resolve(kind: str):
    """The job function for a kind."""
    target = JOB_KINDS.get(kind) or (kind if ":" in kind else None)
    if target is None:
        raise StoreError(f"unknown job kind {kind!r} (known: {', '.join(sorted(JOB_KINDS)) or 'none'})")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def is_heavy(kind: str) -> bool:
    if kind in HEAVY:
        return True
    if ":" in kind and kind not in JOB_KINDS:
        return bool(getattr(resolve(kind), "heavy", False))
    return False


def submit(store: Store, kind: str, config: dict, owner: str = "") -> int:
    """Queue a job and start its worker; returns the job id."""
    if kind not in JOB_KINDS and ":" not in kind:
        raise StoreError(f"unknown job kind {kind!r} (known: {', '.join(sorted(JOB_KINDS)) or 'none'})")
    json.dumps(config)  # fail here, not in the worker, on a config that cannot be stored
    with _QUEUEING:  # a visitor's calls at the same moment are counted one after the other
        check_visitor(store, owner)
        job_id = store.create_job(kind, config, owner=owner, heavy=is_heavy(kind))
    spawn_worker(store, job_id)
    return job_id


def check_visitor(store: Store, owner: str) -> None:
    """demo.DemoLimit when the demo visitor `owner` (every owner but the local "" is one) already has as
    many jobs waiting as one visitor may (DemoCaps.check_jobs): nobody fills the queue or the machine."""
    if owner:
        refresh(store)  # a dead job is not waiting
        mine = [j["state"] for j in store.list_jobs(owner=owner, state=("queued", "running"), limit=None)]
        demo.DemoCaps.from_env().check_jobs(waiting=mine.count("queued"), running=mine.count("running"))


def spawn_worker(store: Store, job_id: int) -> int:
    """Start the worker process for a queued job; records and returns its pid."""
    run_dir = store.run_dir(job_id)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "ctxdistill.jobs", str(job_id), "--workspace", str(store.home)]
    # said before the process starts, so the worker's own first line is never written over
    store.update_job(job_id, message="starting a worker process")
    # The log file, not a pipe: nobody reads the pipe, and a full one blocks the child.
    with open(run_dir / "worker.log", "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    # The first heartbeat, from the instant the worker exists (its own thread takes over once it runs).
    store.update_job(job_id, pid=proc.pid, heartbeat_at=time.time())
    return proc.pid


# --------------------------------------------------------------------------- running jobs


def run_worker(home, job_id: int) -> None:
    """Entry point of the worker process."""
    store = Store(home)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run(store, job_id, background=True)
    finally:
        store.close()


def run_inline(store: Store, job_id: int) -> None:
    """Run a queued job in this process (the CLI's foreground mode)."""
    _run(store, job_id)


def _run(store: Store, job_id: int, background: bool = False) -> None:
    """Wait for a turn, run the job function, record how it ended. Every exit path sets a state."""
    job = store.get_job(job_id)
    heartbeat = Heartbeat(store, job_id)
    heartbeat.start()
    ctx = None
    try:
        if background:
            lower_priority()  # after the heartbeat thread started, which keeps its priority
        if not _wait_for_turn(store, job_id):
            return  # cancelled while queued; cancel() already set the state
        job = store.get_job(job_id)
        # the line before torch loads (JobContext's CoreShare imports it): seconds on a busy machine,
        # which the heartbeat counts in modules on this line
        heartbeat.said("loading the libraries")
        store.update_job(job_id, progress_done=0, progress_total=0, message="loading the libraries")
        ctx = JobContext(store, job_id, job["config"], attempt=job["attempts"], heartbeat=heartbeat)
        (ctx.run_dir / "config.json").write_text(json.dumps(job["config"], indent=2))
        ctx.log.info("start %s (attempt %d, pid %d)", job["kind"], job["attempts"], os.getpid())
        fn = resolve(job["kind"])
        ctx.cores.fit(ctx.log, at_least_s=0.25)  # before the model loads: its first reading
        fn(ctx, job["config"])
        if ctx.should_stop():
            raise Cancelled("cancelled by request")
        store.update_job(job_id, state="done", finished_at=time.time(), error=None)
        ctx.log.info("done")
    except Cancelled:
        store.update_job(job_id, state="cancelled", finished_at=time.time(), message="cancelled")
        if ctx:
            ctx.log.info("cancelled")
    except BaseException as e:  # SystemExit / KeyboardInterrupt too: never leave 'running'
        cancelled = _safe(lambda: store.get_job(job_id)["cancel_requested"], False)
        error = redact(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        if isinstance(e, SystemExit):
            error = f"interrupted: the worker was terminated (exit {e.code})"
        if ctx:  # the log first: a job whose row says failed has its traceback written
            ctx.log.error("failed: %s\n%s", error, redact(traceback.format_exc(limit=8)))
        else:
            traceback.print_exc()
        _safe(
            lambda: store.update_job(
                job_id,
                state="cancelled" if cancelled else "failed",
                finished_at=time.time(),
                error=None if cancelled else error,
            )
        )
        if not isinstance(e, Exception):
            raise
    finally:
        heartbeat.stop()
        if ctx:
            ctx.close()


def _wait_for_turn(store: Store, job_id: int) -> bool:
    """Claim the job; while a heavy job runs or an earlier one waits, stay queued."""
    last = None
    while True:
        ahead = store.claim_job(job_id, os.getpid(), per_owner=demo.DemoCaps.from_env().jobs_running)
        if ahead == 0:
            return True
        if ahead < 0:
            return False
        if ahead != last:
            store.update_job(
                job_id,
                if_state="queued",
                message=f"waiting: {ahead} model job{'s' if ahead > 1 else ''} ahead in the queue",
            )
            last = ahead
        refresh(store)  # a dead job ahead must not block the queue forever
        time.sleep(QUEUE_POLL_S)


# --------------------------------------------------------------------------- control


def cancel(store: Store, job_id: int, grace_s: float = 10.0) -> None:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops at
    its next step, and is killed if still alive `grace_s` later (see refresh())."""
    now = time.time()
    if store.update_job(
        job_id,
        if_state="queued",
        state="cancelled",
        cancel_requested=True,
        finished_at=now,
        message="cancelled before it started",
    ):
        return
    store.update_job(job_id, if_state="running", cancel_requested=True, kill_after=now + grace_s, message="cancelling…")


def resume(store: Store, job_id: int) -> int:
    """Run a failed or cancelled job again with the same config; returns the job id.

    The job function is expected to skip what it already wrote to the store."""
    job = store.get_job(job_id)
    if job["state"] not in ("failed", "cancelled"):
        raise StoreError(f"job {job_id} is {job['state']}; only failed or cancelled jobs can be resumed")
    check_visitor(store, job["owner"])
    if job["pid"] and job["pid"] != os.getpid() and _pid_alive(job["pid"]):
        kill_worker(job["pid"], job_id)  # a hung worker declared dead must not write again
    if not store.update_job(
        job_id,
        if_state=("failed", "cancelled"),
        state="queued",
        error=None,
        cancel_requested=False,
        kill_after=None,
        finished_at=None,
        pid=None,
        heartbeat_at=None,
        message="resumed",
    ):
        raise StoreError(f"job {job_id} changed state; not resumed")
    spawn_worker(store, job_id)
    return job_id


def refresh(store: Store) -> None:
    """Settle jobs whose worker is gone: mark them failed (or cancelled, if a
    cancel was asked for), and kill workers that outlived their cancel grace."""
    for pid, proc in list(_CHILDREN.items()):  # reap finished workers: no zombies pile up
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
    now = time.time()
    for job in store.list_jobs(state=("queued", "running"), limit=None):
        pid, job_id = job["pid"], job["id"]
        if pid is None:
            continue  # not started by a worker (yet)
        alive = worker_alive(pid, job_id)
        if (
            alive
            and job["state"] == "running"
            and job["cancel_requested"]
            and job["kill_after"] is not None
            and now > job["kill_after"]
        ):
            if kill_worker(pid, job_id):
                store.update_job(
                    job_id,
                    if_state="running",
                    state="cancelled",
                    finished_at=now,
                    message="killed: it did not stop within the grace period",
                )
            continue
        if alive:
            continue  # however long since its last heartbeat: see starved()
        why = f"pid {pid} is gone" if not _pid_alive(pid) else f"pid {pid} now runs another program"
        if job["cancel_requested"]:
            store.update_job(
                job_id, if_state=("queued", "running"), state="cancelled", finished_at=now, message=f"stopped ({why})"
            )
        else:
            store.update_job(
                job_id,
                if_state=("queued", "running"),
                state="failed",
                finished_at=now,
                error=f"interrupted: the worker process died ({why})",
            )


def starved(job: dict, now: float | None = None) -> float | None:
    """Seconds since a live job's last heartbeat when that is long (its worker gets little CPU, or
    is stopped), else None: for a status line, never a reason to fail the job."""
    beat = job.get("heartbeat_at")
    if job["state"] not in ("queued", "running") or beat is None:
        return None
    age = (now or time.time()) - beat
    return age if age > STALE_AFTER_S else None


def wait(store: Store, job_id: int, timeout: float) -> dict:
    """Poll until the job reaches a terminal state; returns its row. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        refresh(store)
        job = store.get_job(job_id)
        if job["state"] in TERMINAL_STATES:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.1)


def list_jobs(store: Store, kind: str | None = None, owner: str | None = None, limit: int | None = 50) -> list[dict]:
    """store.list_jobs after refresh(), so no dead job shows as running."""
    refresh(store)
    return store.list_jobs(kind=kind, owner=owner, limit=limit)


def get(store: Store, job_id: int, owner: str | None = None) -> dict:
    """store.get_job after refresh(); with `owner`, NotFound unless the job is theirs."""
    refresh(store)
    return store.get_job(job_id, owner=owner)


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:  # poll() also reaps our dead child
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our child, just reaped
    except ChildProcessError:
        pass  # not our child
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie (someone else's dead child) is dead to us
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def worker_alive(pid: int, job_id: int) -> bool:
    """Whether the process recorded for a job still runs it: the pid exists, is no zombie, and runs
    this job's worker (or, for a job run in the foreground, a ctxdistill command). Judged by the
    process, not by the heartbeat's age."""
    if pid == os.getpid():
        return True
    if not _pid_alive(pid):
        return False
    args = _cmdline(pid)
    if args is None or args == [b""]:
        return True  # no /proc (the pid exists, which is all we can tell), or starting (vfork, before exec)
    if b"ctxdistill.jobs" in args:
        return _runs_job(args, job_id)
    return any(b"ctxdistill" in a for a in args)


def kill_worker(pid: int, job_id: int) -> bool:
    """SIGKILL a worker's process group. Only when the pid still runs this job's
    worker: after a reboot the number may belong to an unrelated process."""
    if pid == os.getpid() or not _is_worker(pid, job_id):
        return False
    try:
        pgid = os.getpgid(pid)
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)  # the worker and anything it started
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _pid_alive(pid)  # reap it if it is our child
    return True


def _is_worker(pid: int, job_id: int) -> bool:
    args = _cmdline(pid)
    return pid in _CHILDREN if args is None else _runs_job(args, job_id)  # no /proc: trust only our children


def _cmdline(pid: int) -> list[bytes] | None:
    """The arguments the process runs with ([b""] while it starts or exits); None without /proc."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def _runs_job(args: list[bytes], job_id: int) -> bool:
    return b"ctxdistill.jobs" in args and str(job_id).encode() in args


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxdistill.jobs", description="Run one job.")
    parser.add_argument("job_id", type=int)
    parser.add_argument("--workspace", default=None, help="workspace directory")
    args = parser.parse_args(argv)
    try:
        run_worker(args.workspace, args.job_id)
    except NotFound as e:
        sys.exit(str(e))


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy, so that
    # `ctxdistill.jobs.Cancelled` raised by job functions is the class caught here.
    from ctxdistill import jobs as _jobs

    _jobs.main()
