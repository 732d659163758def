"""Jobs run in real worker processes against a workspace in tmp_path."""

import os
import signal
import time
from pathlib import Path

import pytest

from ctxdistill import jobs
from ctxdistill.store import StoreError

COUNT = "tests.jobfixtures:count"
HEAVY_COUNT = "tests.jobfixtures:heavy_count"


def _until(predicate, timeout=10.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_submit_runs_to_done_with_progress(store):
    job_id = jobs.submit(store, COUNT, {"n": 5, "sleep": 0.01})
    job = jobs.wait(store, job_id, timeout=20)
    assert job["state"] == "done", job
    assert (job["progress_done"], job["progress_total"]) == (5, 5)
    assert job["result"] == {"n": 5, "attempt": 1}
    assert job["started_at"] and job["finished_at"] >= job["started_at"] and job["error"] is None
    assert [m["step"] for m in store.get_metrics(job_id, "i")] == [0, 1, 2, 3, 4]
    run_dir = store.runs_dir / str(job_id)
    assert "done" in (run_dir / "log.txt").read_text()
    assert (run_dir / "config.json").exists() and (run_dir / "worker.log").exists()


@pytest.mark.parametrize("mode", ["idle", "low", "normal", "highest"])
def test_worker_computes_below_the_app_priority(store, monkeypatch, mode):
    """A training job takes the CPU the people clicking through the app leave."""
    monkeypatch.setenv("CTXDISTILL_WORKER_PRIORITY", mode)
    job = jobs.wait(store, jobs.submit(store, "tests.jobfixtures:priority", {}), timeout=20)
    if mode == "highest":
        assert (
            job["state"] == "failed" and "CTXDISTILL_WORKER_PRIORITY must be one of idle, low, normal" in job["error"]
        )
        return
    result = job["result"]
    assert (result["idle"], result["nice"]) == (mode == "idle", os.nice(0) + (10 if mode == "low" else 0))
    if result["group_nice"] is not None:  # the worker's own session weighs less than the app's
        assert result["group_nice"] == {"idle": 19, "low": 10, "normal": 0}[mode]


def test_default_priority_lets_a_local_run_finish(monkeypatch):
    """Locally a job gets a share of a busy CPU (nice 10); a public demo's jobs only take idle CPU."""
    monkeypatch.delenv("CTXDISTILL_WORKER_PRIORITY", raising=False)
    monkeypatch.setenv("CTXDISTILL_DEMO", "0")
    assert jobs.worker_priority() == "low"
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    assert jobs.worker_priority() == "idle"


def test_unknown_kind_is_refused(store):
    with pytest.raises(StoreError):
        jobs.submit(store, "no-such-kind", {})
    assert store.list_jobs() == []


def test_cancel_stops_within_a_step(store):
    job_id = jobs.submit(store, COUNT, {"n": 200, "sleep": 0.05})
    _until(lambda: store.get_job(job_id)["progress_done"] >= 3)
    jobs.cancel(store, job_id)
    at_cancel = store.get_job(job_id)["progress_done"]
    t0 = time.monotonic()
    job = jobs.wait(store, job_id, timeout=10)
    assert job["state"] == "cancelled" and job["cancel_requested"]
    assert time.monotonic() - t0 < 2
    assert job["progress_done"] <= at_cancel + 2


def test_failure_is_recorded(store):
    job_id = jobs.submit(store, "tests.jobfixtures:fail", {"message": "the teapot broke"})
    job = jobs.wait(store, job_id, timeout=20)
    assert job["state"] == "failed"
    assert job["error"] == "ValueError: the teapot broke"
    log = (store.runs_dir / str(job_id) / "log.txt").read_text()
    assert "Traceback" in log and "the teapot broke" in log


def test_killed_worker_is_marked_failed_then_resumes(store):
    job_id = jobs.submit(store, COUNT, {"n": 30, "sleep": 0.05})
    _until(lambda: store.get_job(job_id)["progress_done"] >= 5)
    pid = store.get_job(job_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()

    def marked():
        jobs.refresh(store)
        return store.get_job(job_id)["state"] == "failed"

    _until(marked, timeout=3)
    assert time.monotonic() - t0 < 3
    job = store.get_job(job_id)
    assert job["error"].startswith("interrupted: the worker process died")
    first_run = {m["step"] for m in store.get_metrics(job_id, "attempt")}
    assert len(first_run) >= 5

    assert jobs.resume(store, job_id) == job_id
    job = jobs.wait(store, job_id, timeout=20)
    assert job["state"] == "done" and job["attempts"] == 2 and job["error"] is None
    attempts = {m["step"]: m["value"] for m in store.get_metrics(job_id, "attempt")}
    assert sorted(attempts) == list(range(30))
    assert all(attempts[s] == 1 for s in first_run)  # done steps were skipped
    assert all(attempts[s] == 2 for s in set(attempts) - first_run)


def test_resume_only_failed_or_cancelled(store):
    job_id = jobs.submit(store, COUNT, {"n": 1})
    jobs.wait(store, job_id, timeout=20)
    with pytest.raises(StoreError):
        jobs.resume(store, job_id)


def test_heavy_jobs_run_one_at_a_time(store):
    first = jobs.submit(store, HEAVY_COUNT, {"n": 8, "sleep": 0.05})
    second = jobs.submit(store, HEAVY_COUNT, {"n": 3, "sleep": 0.01})
    light = jobs.submit(store, COUNT, {"n": 2})
    assert store.get_job(first)["heavy"] and not store.get_job(light)["heavy"]
    _until(lambda: store.get_job(first)["state"] == "running")
    _until(lambda: "queue" in store.get_job(second)["message"])
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = (store.get_job(first)["state"], store.get_job(second)["state"])
        seen.append(states)
        assert states != ("running", "running")
        if states[1] == "done":
            break
        time.sleep(0.02)
    assert jobs.wait(store, light, timeout=10)["state"] == "done"
    a, b = store.get_job(first), store.get_job(second)
    assert a["state"] == b["state"] == "done"
    assert b["started_at"] >= a["finished_at"]
    assert ("running", "queued") in seen


def test_cancel_queued_job_is_immediate(store):
    first = jobs.submit(store, HEAVY_COUNT, {"n": 100, "sleep": 0.05})
    second = jobs.submit(store, HEAVY_COUNT, {"n": 1})
    _until(lambda: store.get_job(first)["state"] == "running")
    jobs.cancel(store, second)
    assert store.get_job(second)["state"] == "cancelled"
    jobs.cancel(store, first)
    assert jobs.wait(store, first, timeout=10)["state"] == "cancelled"
    assert store.get_job(second)["started_at"] is None


def test_stubborn_job_is_killed_after_grace(store):
    job_id = jobs.submit(store, "tests.jobfixtures:stubborn", {})
    _until(lambda: store.get_job(job_id)["state"] == "running")
    pid = store.get_job(job_id)["pid"]
    jobs.cancel(store, job_id, grace_s=0.5)
    job = jobs.wait(store, job_id, timeout=5)
    assert job["state"] == "cancelled" and "grace" in job["message"]
    _until(lambda: not jobs._pid_alive(pid), timeout=2)


def test_run_inline(store):
    job_id = store.create_job(COUNT, {"n": 3})
    jobs.run_inline(store, job_id)
    job = store.get_job(job_id)
    assert job["state"] == "done" and job["pid"] == os.getpid() and job["progress_done"] == 3
    failing = store.create_job("tests.jobfixtures:fail", {})
    jobs.run_inline(store, failing)
    assert store.get_job(failing)["state"] == "failed"


def test_pid_taken_by_another_program_is_marked_failed(store):
    import subprocess

    bystander = subprocess.Popen(["sleep", "30"])  # alive, but not a worker of ours
    # until it has exec'd, its cmdline is empty, which reads as a worker still starting
    _until(lambda: Path(f"/proc/{bystander.pid}/cmdline").read_bytes().startswith(b"sleep"), timeout=5)
    try:
        job_id = store.create_job(COUNT, {})
        store.update_job(job_id, state="running", pid=bystander.pid, heartbeat_at=time.time() - 20)
        jobs.refresh(store)
        job = store.get_job(job_id)
        assert job["state"] == "failed" and "now runs another program" in job["error"]
        assert bystander.poll() is None  # a stranger's process is never killed
    finally:
        bystander.kill()
        bystander.wait()


def test_starved_worker_is_not_declared_dead(store, monkeypatch):
    """A worker that gets no CPU for a while (stopped here; a SCHED_IDLE worker beside a CPU hog on
    every core is starved the same way, where the scheduler lets it be) sends no heartbeat: the
    heartbeat goes stale, but the process is alive, so the job stays running and then finishes."""
    import signal

    monkeypatch.setattr(jobs, "STALE_AFTER_S", 2.0)  # what once declared a worker dead, reached sooner
    job_id = jobs.submit(store, "tests.jobfixtures:spin", {"seconds": 1.0})
    _until(lambda: store.get_job(job_id)["state"] == "running", timeout=30)
    pid = store.get_job(job_id)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        starved, deadline = 0.0, time.monotonic() + 2 * jobs.STALE_AFTER_S + 1
        while time.monotonic() < deadline:
            jobs.refresh(store)
            job = store.get_job(job_id)
            assert job["state"] == "running", job
            starved = max(starved, jobs.starved(job) or 0.0)
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert starved > jobs.STALE_AFTER_S  # the heartbeat really went stale
    job = jobs.wait(store, job_id, timeout=60)
    assert job["state"] == "done", job


def test_a_command_settles_a_worker_killed_while_no_page_was_open(store):
    """Nothing polls: the next `ctxdistill` command (or app start) opening the store marks it failed."""
    import argparse
    import subprocess
    import sys

    from ctxdistill.cli import open_store

    job_id = store.create_job("tests.jobfixtures:stubborn", {})
    worker = subprocess.Popen(
        [sys.executable, "-m", "ctxdistill.jobs", str(job_id), "--workspace", str(store.home)], start_new_session=True
    )  # a worker this process does not track
    _until(lambda: store.get_job(job_id)["state"] == "running", timeout=30)
    worker.kill()
    worker.wait()
    assert store.get_job(job_id)["state"] == "running"  # nobody has looked yet
    assert open_store(argparse.Namespace(workspace=str(store.home))).get_job(job_id)["state"] == "failed"


def test_meter_counts_this_runs_work_only(monkeypatch):
    from ctxdistill.jobs import Meter, eta_text

    now = [100.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: now[0])
    meter = Meter(10, "prompts", done=4, name="sampling")  # resumed: 4 were done before
    assert meter.line(4) == "sampling: 4/10 prompts"
    now[0] += 4.0
    assert meter.rate(6) == 0.5 and meter.eta(6) == 8.0
    assert meter.line(6, "30 tokens/s") == "sampling: 6/10 prompts · 30 tokens/s · 0.5 prompts/s · ETA 8s"
    assert meter.due(6) and not meter.due(7) and meter.due(10)
    assert eta_text(185) == "3m 05s" and eta_text(-3) == "0s"


# --------------------------------------------------------------------------- a restore beside a job (issue 24)


def test_a_restore_while_a_job_runs_is_refused_and_no_job_id_is_issued_twice(tmp_path, capsys):
    """`train --detach`, `doctor --restore`, `train --detach` used to give two workers for one job id,
    their files crossed. The running worker holds the workspace lock: the restore is refused."""
    from ctxdistill import cli
    from ctxdistill.store import Store

    home = tmp_path / "ws"
    with Store(home) as s:
        s.backup(force=True)
        first = jobs.submit(s, COUNT, {"n": 40, "sleep": 0.1})
        _until(lambda: s.get_job(first)["state"] == "running", timeout=30)
    restore = ["doctor", "--restore", "--force", "--workspace", str(home)]
    assert cli.main(restore) == 2  # only the worker has the workspace open now
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use" in err and "nothing was changed" in err
    with Store(home) as s:
        job = jobs.wait(s, first, timeout=60)
    assert job["state"] == "done"
    worker = jobs._CHILDREN.get(job["pid"])  # absent when a refresh has reaped it already
    if worker is not None:
        worker.wait(timeout=30)  # the worker lets go of the workspace as it exits
    assert cli.main(restore) == 0  # nobody has it open: the backup from before the job is back
    assert "lost: 1 jobs" in capsys.readouterr().out
    with Store(home) as s:
        second = jobs.submit(s, COUNT, {"n": 1})
        assert second > first and jobs.wait(s, second, timeout=30)["state"] == "done"
        assert "done" in (s.runs_dir / str(first) / "log.txt").read_text()  # the first run's files are its own
        assert (s.runs_dir / str(second) / "log.txt").is_file()


def test_a_worker_never_writes_into_another_jobs_directory(store):
    job_id = store.create_job(COUNT, {"n": 1})
    run = store.runs_dir / str(job_id)
    (run / "run_key").write_text("the key of a job of another database\n")
    with pytest.raises(StoreError, match=f"is not job {job_id}'s"):
        jobs.spawn_worker(store, job_id)
    jobs.run_inline(store, job_id)  # the worker's own check, in this process
    job = store.get_job(job_id)
    assert job["state"] == "failed" and f"is not job {job_id}'s" in job["error"]
    assert sorted(p.name for p in run.iterdir()) == ["run_key"]  # nothing written into it


def test_a_job_says_something_from_its_submission_on(store, monkeypatch):
    """The line reads "starting a worker process" from the moment the job is queued, and "loading the
    libraries" before the job's context is made (its CoreShare imports torch: seconds when busy)."""
    spawned = []
    monkeypatch.setattr(jobs, "_CHILDREN", {})  # the fake process is nobody's to reap
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: spawned.append(store.get_job(job_id)) or _Fake())
    job_id = store.create_job(COUNT, {"n": 1})
    jobs.spawn_worker(store, job_id)
    assert spawned[0]["message"] == "starting a worker process"
    store.update_job(job_id, pid=None)  # no worker runs it: this process does

    made = []
    context = jobs.JobContext
    monkeypatch.setattr(jobs, "JobContext", lambda *a, **k: made.append(store.get_job(job_id)) or context(*a, **k))
    jobs.run_inline(store, job_id)
    assert made[0]["message"] == "loading the libraries" and store.get_job(job_id)["state"] == "done"


class _Fake:
    pid = 999_999_999
