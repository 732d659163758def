"""cores.py: a job's compute uses the cores the other processes leave free."""

import subprocess
import sys
import time

import torch

from ctxdistill import cores, jobs


def test_threads_follow_the_free_cores():
    share = cores.CoreShare(cores=2, most=2)
    assert [share.threads_for(x) for x in (0.0, 0.4, 0.6, 1.0, 1.8, 7.0)] == [2, 2, 1, 1, 1, 1]
    assert cores.CoreShare(cores=8, most=4).threads_for(2.0) == 4  # never more than it started with


def test_fit_reads_the_others_use_and_sets_the_threads(monkeypatch):
    clock = {"t": 0.0, "busy": 100.0, "own": 10.0}
    monkeypatch.setattr(cores.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(cores, "_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(cores, "_own_seconds", lambda: clock["own"])
    before = torch.get_num_threads()
    share = cores.CoreShare(cores=2, most=2)
    try:
        clock.update(t=1.0, busy=102.0, own=10.5)
        assert share.fit() is None  # too soon to say
        torch.set_num_threads(2)
        clock.update(t=4.0, busy=107.0, own=11.0)  # 7 busy core-seconds in 4 s, 1 of them this process's
        assert share.fit() == 1 and torch.get_num_threads() == 1
        clock.update(t=8.0, busy=109.5, own=12.5)  # others: (2.5 - 1.5) / 4 = 0.25 cores
        assert share.fit() == 2 and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        share.restore()  # a job that ends leaves the process with the threads it found
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_busy_process_is_seen_in_proc_stat():
    share = cores.CoreShare()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        assert share.others(at_least_s=0.5) > 0.5
    finally:
        spinner.kill()


def test_a_jobs_progress_fits_its_threads(store, monkeypatch):
    calls = []
    monkeypatch.setattr(cores.CoreShare, "fit", lambda self, log=None, at_least_s=2.0: calls.append(log))
    job = store.create_job("tests.jobfixtures:count", {})
    ctx = jobs.JobContext(store, job, {})
    ctx.progress(1, 2, "one of two")
    ctx.close()
    assert calls == [ctx.log] and store.get_job(job)["message"] == "one of two"
