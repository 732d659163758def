"""CPU an open browser tab costs while nobody touches it: the app server and headless Chromium.

    .venv/bin/python bench/idle_tab.py                 # 60 s before, during and after a job
    .venv/bin/python bench/idle_tab.py --seconds 30 --tab compare

A fresh workspace, the app as `ctxdistill serve`, one page open on a tab. Three windows of
--seconds each: before any job ran, while a training job runs (its rows written into the store a
step a second, as a worker writes them, with no model: the figure is what watching it costs) and
after it finished. For each it prints the CPU
seconds the server (and its children) and the browser used, as a share of one core. Target: near
zero when nothing runs; one light poll a second while a job runs. The job is started outside the
page, which notices it on a tab switch (a job started from the page turns its poll on at once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

from ctxdistill.store import Store  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, start_app, stop_app  # noqa: E402


def cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def measure(server_pid: int, skip: set[int], seconds: float) -> tuple[float, float]:
    """(server, browser) CPU seconds over the window. The browser is every other process this
    script started (Playwright's driver and Chromium), except `skip` (job workers)."""

    def parties():
        server = tree(server_pid)
        ours = {p.pid for p in server} | skip
        browser = [p for p in psutil.Process().children(recursive=True) if p.pid not in ours]
        return server, browser

    server0, browser0 = (cpu_seconds(x) for x in parties())
    time.sleep(seconds)
    server1, browser1 = (cpu_seconds(x) for x in parties())
    return server1 - server0, browser1 - browser0


def fake_run(store: Store, job_id: int, steps: int) -> None:
    """Write a training job's progress and metrics a step a second, then mark it done."""
    for step in range(1, steps + 1):
        time.sleep(1.0)
        store.log_metrics(job_id, step, {"loss": 1.0 / step, "kl": 1.0 / step})
        store.update_job(
            job_id,
            progress_done=step,
            progress_total=steps,
            message=f"step {step}/{steps} · loss {1.0 / step:.4f} · 300 tok/s · ETA {steps - step}s",
        )
    store.update_job(job_id, state="done", finished_at=time.time(), message="done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tab", default="distill", help="the tab left open (its title, lower-cased)")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds between the page's first load (the model loaded) and the first window",
    )
    add_profile_flag(parser)
    args = parser.parse_args()
    apply_profile(args)
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="ctxdistill-idle-"))
    proc, url = start_app(home)
    rows = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.wait_for_selector("#token-count >> text=tokens of the model")  # the model is loaded
            page.get_by_role("tab", name=args.tab.capitalize()).click()
            time.sleep(args.settle)
            rows.append(("before any job", *measure(proc.pid, set(), args.seconds)))
            store = Store(home)
            job_id = store.create_job("train", {"steps": int(args.seconds) + 5, "loss": "kl"})
            # a training run's rows as a worker writes them, a step a second (no model runs: what is
            # measured is watching it); the page notices a job started elsewhere on a tab switch
            store.update_job(job_id, state="running")
            page.get_by_role("tab", name="Data").click()
            page.get_by_role("tab", name=args.tab.capitalize()).click()
            steps = threading.Thread(target=fake_run, args=(store, job_id, int(args.seconds) + 5))
            steps.start()
            time.sleep(3)
            rows.append(("while a job runs", *measure(proc.pid, set(), args.seconds)))
            steps.join()
            time.sleep(5)
            rows.append(("after it finished", *measure(proc.pid, set(), args.seconds)))
            browser.close()
    finally:
        stop_app(proc)
    print(f"open tab: {args.tab}, {args.seconds:.0f} s windows (CPU seconds; % of one core)")
    for name, server, chrome in rows:
        s = args.seconds
        print(
            f"  {name:18} server {server:6.2f} s ({server / s:4.0%})  browser {chrome:6.2f} s ({chrome / s:4.0%})"
            f"  total {(server + chrome) / s:4.0%}"
        )


if __name__ == "__main__":
    main()
