"""Load and fault figures: N concurrent users against the real app while a training job runs.

    .venv/bin/python bench/load.py                         # N = 1, 4, 16, 20 s each, then the kill test
    .venv/bin/python bench/load.py --users 4 --seconds 10 --no-train
    .venv/bin/python bench/load.py --users 4 --attack --no-kill    # hostile constitutions and a job flood
    .venv/bin/python bench/load.py --users 4 --attack jobs --no-kill   # the job flood alone

Each user is its own process with its own gradio_client session. Until the time is up it
runs previews back to back (`/preview`, the model queue: one at a time across all users) and,
meanwhile, light calls on the store every LIGHT_PAUSE_S — list samples, accept/reject one with a
unique note, save a constitution version with a unique description. Every answered write is
written down as acknowledged. The script prints p50/p95 latency of light calls and of previews, errors and
throughput per N. Target: no errors, light p95 under 1 s with the training running.

With --attack one more visitor sends, back to back, what issue 13 found freezing the app: a YAML
alias bomb, 200k-deep JSON, a 2 MB constitution and one whose check is a catastrophic regex; and
another floods the queue with training jobs (issue 24: eight in a second used to start eight
workers), through jobs.submit as the Distill tab calls it, as demo visitor "flooder" (--attack
constitutions or --attack jobs runs one of the two alone). The others' figures must not change: the
attackers' calls are counted apart ("attacks refused", "jobs refused", and the worker processes the
flood started).

Then the fault test: users write while the app process is killed (SIGKILL) mid-write; the
store must pass PRAGMA integrity_check and hold every acknowledged write, and the restarted
app must serve them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxdistill import constitution as cmod  # noqa: E402
from ctxdistill.prompts import ensure_default_prompts  # noqa: E402
from ctxdistill.store import Store  # noqa: E402
from tests.e2e.conftest import start_app, stop_app  # noqa: E402

PIRATE = REPO / "assets" / "constitutions" / "pirate.yaml"
LIGHT_PAUSE_S = 0.2  # a person clicking through the review queue, fast
PREVIEW_TOKENS = 16
CALL_TIMEOUT_S = 300


def seed_workspace(home: Path, n_samples: int = 150) -> int:
    """The pirate constitution, the default prompt set and pending samples to curate; returns the version."""
    store = Store(home)
    c = cmod.load(PIRATE)
    cid = store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c))
    ensure_default_prompts(store)
    for p in store.get_prompts("default", split="train")[:n_samples]:
        store.upsert_sample(p["id"], cid, 0, prompted=f"Arr! {p['text']}", unprompted=p["text"])
    store.close()
    return cid


def user(url: str, seconds: float, index: int, constitution_id: int, out: str, previews: bool, start=None) -> None:
    """One visitor until the deadline: previews one after another in a thread (as a preview streams
    while they click around) and light calls in a loop; one JSON line per call in `out`.

    The two threads use two clients: one gradio_client session shares a single event stream
    between its calls, and when one call finishes just as another is submitted from a second
    thread, the client can close that stream under the new call (it then fails with an empty
    CancelledError, the server never having seen a problem).

    With ``start`` (a barrier), the clock starts once every visitor has connected: the figures
    are of the app in use, not of N clients downloading the app's config at the same moment."""
    import threading

    from gradio_client import Client

    rng = random.Random(index)
    base = cmod.to_dict(cmod.load(PIRATE))
    lock = threading.Lock()
    with open(out, "a", buffering=1) as log:

        def record(rec: dict) -> None:
            with lock:
                log.write(json.dumps(rec) + "\n")

        try:
            client, preview_client = Client(url, verbose=False), Client(url, verbose=False)
        except Exception as exc:
            record({"kind": "connect", "ok": False, "error": str(exc)[:200], "s": 0.0})
            return
        finally:
            if start is not None:
                start.wait()
        deadline = time.monotonic() + seconds

        def call(kind: str, n: int) -> None:
            rec = {"kind": kind, "user": index}
            start = time.perf_counter()
            try:
                if kind == "preview":
                    preview_client.submit(
                        PIRATE.read_text(),
                        rng.choice(["How do I boil an egg?", "Name a colour.", "Hi!"]),
                        1,
                        n,
                        PREVIEW_TOKENS,
                        0.0,
                        api_name="/preview",
                    ).result(timeout=CALL_TIMEOUT_S)
                elif kind == "samples":
                    client.predict(constitution_id, "", 20, api_name="/samples")
                elif kind == "review":
                    rows = client.predict(constitution_id, "", 50, api_name="/samples")
                    s = rng.choice(rows)
                    note = f"u{index}-{n}-{rng.random():.6f}"
                    start = time.perf_counter()  # the write alone is timed; the read was above
                    got = client.predict(
                        s["id"], s["version"], rng.choice(["accepted", "rejected"]), note, api_name="/review"
                    )
                    rec["ack"] = {"sample": s["id"], "note": note, "version": got["version"]}
                else:
                    description = f"u{index}-{n}-{rng.random():.6f}"
                    got = client.predict(
                        json.dumps({**base, "description": description}), description, api_name="/save_version"
                    )
                    rec["ack"] = {"version": got["id"], "description": description}
                rec["ok"] = True
            except Exception as exc:
                rec.update(
                    ok=False, error=f"{type(exc).__name__}: {exc}"[:300], conflict="Changed elsewhere" in str(exc)
                )
            rec["s"] = time.perf_counter() - start
            record(rec)

        def preview_loop() -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                call("preview", n)

        thread = threading.Thread(target=preview_loop, daemon=True) if previews else None
        if thread:
            thread.start()
        n = 0
        while time.monotonic() < deadline:
            n += 1
            call(("samples", "review", "save_version")[n % 3], n)
            time.sleep(LIGHT_PAUSE_S)
        if thread:
            thread.join(CALL_TIMEOUT_S)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record({"kind": "cpu", "ok": True, "s": usage.ru_utime + usage.ru_stime})


def hostile_texts() -> list[str]:
    from tests.test_hostile import alias_bomb

    regex_check = "name: slow\nprinciples:\n  - id: p1\n    text: say a\n    check: {kind: regex, value: '(a|aa)+$'}\n"
    return [alias_bomb(), "[" * 200_000 + "]" * 200_000, "name: big\nprinciples: [x]\n#" + "x" * (2 << 20), regex_check]


def attacker(url: str, seconds: float, out: str, start=None) -> None:
    """One visitor sending hostile constitutions to /save_version until the deadline."""
    from gradio_client import Client

    client, texts, n = Client(url, verbose=False), hostile_texts(), 0
    if start is not None:
        start.wait()
    deadline = time.monotonic() + seconds
    with open(out, "a", buffering=1) as log:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                client.predict(texts[n % len(texts)], "attack", api_name="/save_version")
                refused = False
            except Exception:
                refused = True
            log.write(
                json.dumps({"kind": "attack", "ok": True, "refused": refused, "s": time.perf_counter() - t}) + "\n"
            )
            n += 1


def flooder(home: str, seconds: float, out: str, cid: int, start=None) -> None:
    """One demo visitor submitting training jobs back to back until the deadline; the per-visitor
    limits (DemoCaps.jobs_queued / jobs_running) must refuse all but the first ones. Its jobs are
    cancelled at the end."""
    from ctxdistill import jobs

    store = Store(home)
    if start is not None:
        start.wait()
    deadline, accepted = time.monotonic() + seconds, []
    with open(out, "a", buffering=1) as log:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                accepted.append(jobs.submit(store, "train", train_config(cid).to_dict(), owner="flooder"))
                refused = False
            except ValueError:  # demo.DemoLimit
                refused = True
            log.write(json.dumps({"kind": "flood", "ok": True, "refused": refused, "s": time.perf_counter() - t}))
            log.write("\n")
            time.sleep(0.1)
        workers = len({store.get_job(j)["pid"] for j in accepted})
        log.write(json.dumps({"kind": "flood_workers", "ok": True, "n": workers, "s": 0.0}) + "\n")
    for j in accepted:
        jobs.cancel(store, j, grace_s=0)
    store.close()


def run_users(
    url: str, users: int, seconds: float, cid: int, out_dir: Path, previews: bool = True, attack: str | None = None
) -> list[dict]:
    """Start `users` processes and the `attack` ("constitutions", "jobs" or both), wait for them, return every
    call they made."""
    ctx = mp.get_context("spawn")
    files = [out_dir / f"user-{users}-{i}.jsonl" for i in range(users)]
    attackers = [a for a in ("constitutions", "jobs") if attack in (a, "both")]
    start = ctx.Barrier(users + len(attackers))
    procs = [
        ctx.Process(target=user, args=(url, seconds, i, cid, str(f), previews, start)) for i, f in enumerate(files)
    ]
    if "constitutions" in attackers:
        files.append(out_dir / f"attacker-{users}.jsonl")
        procs.append(ctx.Process(target=attacker, args=(url, seconds, str(files[-1]), start)))
    if "jobs" in attackers:
        files.append(out_dir / f"flooder-{users}.jsonl")
        home = str(out_dir.parent)  # the workspace the app serves (out_dir is its bench/)
        procs.append(ctx.Process(target=flooder, args=(home, seconds, str(files[-1]), cid, start)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(seconds + CALL_TIMEOUT_S)
        if p.is_alive():
            p.kill()
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines() if line.strip()]


def job_row(home: Path, job: int) -> dict:
    store = Store(home)
    try:
        return store.get_job(job)
    finally:
        store.close()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a live process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(calls: list[dict], seconds: float) -> dict:
    light = [c for c in calls if c["kind"] in ("samples", "review", "save_version")]
    previews = [c for c in calls if c["kind"] == "preview"]
    ok = lambda cs: [c["s"] for c in cs if c["ok"]]
    ms = lambda v: None if v is None else round(v * 1000)
    return {
        "light_calls": len(light),
        "light_p50_ms": ms(percentile(ok(light), 50)),
        "light_p95_ms": ms(percentile(ok(light), 95)),
        "previews": len(previews),
        "preview_p50_ms": ms(percentile(ok(previews), 50)),
        "preview_p95_ms": ms(percentile(ok(previews), 95)),
        # a review that lost a race with another user's review is the app working as designed
        "conflicts": sum(1 for c in calls if not c["ok"] and c.get("conflict")),
        "errors": sum(1 for c in calls if not c["ok"] and not c.get("conflict")),
        "light_per_s": round(len(ok(light)) / seconds, 1),
        "previews_per_s": round(len(ok(previews)) / seconds, 2),
        "clients_cpu_s": round(sum(c["s"] for c in calls if c["kind"] == "cpu"), 1),
        "attacks": sum(1 for c in calls if c["kind"] == "attack"),
        "attacks_refused": sum(1 for c in calls if c["kind"] == "attack" and c["refused"]),
        "attack_p95_ms": ms(percentile([c["s"] for c in calls if c["kind"] == "attack"], 95)),
        "jobs_sent": sum(1 for c in calls if c["kind"] == "flood"),
        "jobs_refused": sum(1 for c in calls if c["kind"] == "flood" and c["refused"]),
        "flood_workers": sum(c["n"] for c in calls if c["kind"] == "flood_workers"),
    }


def check_acknowledged(home: Path, calls: list[dict]) -> dict:
    """Integrity of the store, and whether every acknowledged write is in it."""
    store = Store(home)
    try:
        acked = [c["ack"] for c in calls if c.get("ok") and "ack" in c]
        missing = []
        for a in acked:
            if "description" in a:
                row = store.get_constitution(a["version"])
                if row["content"].get("description") != a["description"]:
                    missing.append(a)
            else:
                # versions only grow: a later review may replace the note, but never the version
                row = store.get_sample(a["sample"])
                if row["version"] < a["version"] or (row["version"] == a["version"] and row["note"] != a["note"]):
                    missing.append(a)
        return {"integrity_ok": store.integrity_ok(), "acknowledged": len(acked), "missing": len(missing)}
    finally:
        store.close()


def kill_test(home: Path, cid: int, out_dir: Path, users: int = 4, min_acked: int = 20) -> dict:
    """Users write; once `min_acked` writes are acknowledged the app is SIGKILLed mid-run; then the
    store is checked and the app restarted."""
    proc, url = start_app(home)
    ctx = mp.get_context("spawn")
    files = [out_dir / f"kill-{i}.jsonl" for i in range(users)]
    procs = [ctx.Process(target=user, args=(url, 600, 100 + i, cid, str(f), False)) for i, f in enumerate(files)]
    for p in procs:
        p.start()
    read = lambda: [
        json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines() if line.strip()
    ]
    deadline = time.monotonic() + 300
    while sum(1 for c in read() if c.get("ok") and "ack" in c) < min_acked and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()  # SIGKILL while the users keep writing: no shutdown handler runs
    proc.wait()
    time.sleep(1.0)  # the writes in flight fail; nothing more can be acknowledged
    for p in procs:
        p.kill()
        p.join()
    calls = read()
    result = check_acknowledged(home, calls)
    proc, url = start_app(home)  # the restarted app serves what was acknowledged
    try:
        from gradio_client import Client

        served = {v["id"] for v in Client(url, verbose=False).predict(api_name="/versions")}
        result["served_after_restart"] = all(
            c["ack"]["version"] in served for c in calls if c.get("ok") and "description" in c.get("ack", {})
        )
    finally:
        stop_app(proc)
    result["failed_at_kill"] = sum(1 for c in calls if not c["ok"])
    return result


def start_training(home: Path, cid: int, train: bool) -> tuple[int, str]:
    """A training run in a worker process (as the Distill tab starts it), long enough to outlast the bench."""
    from ctxdistill import jobs

    store = Store(home)
    job = jobs.submit(store, "train", train_config(cid).to_dict()) if train else None
    store.close()
    return job, "train" if train else "none"


def train_config(cid: int):
    from ctxdistill.train import TrainConfig

    return TrainConfig(
        constitution_id=cid,
        steps=100_000,
        eval_every=0,
        checkpoint_every=0,
        max_prompts=16,
        batch_size=4,
        sample_tokens=24,
        eval_prompts=4,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, action="append", help="concurrent users (repeat; default 1, 4, 16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per N")
    parser.add_argument("--no-train", dest="train", action="store_false", help="no training job in the background")
    parser.add_argument("--no-previews", dest="previews", action="store_false", help="light calls only")
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="skip the kill-and-restart test")
    parser.add_argument(
        "--attack",
        nargs="?",
        const="both",
        choices=("both", "constitutions", "jobs"),
        help="hostile visitors: one sends hostile constitutions, one floods the queue with jobs (default both)",
    )
    add_profile_flag(parser)
    args = parser.parse_args(argv)
    apply_profile(args)
    home = Path(tempfile.mkdtemp(prefix="ctxdistill-load-"))
    out_dir = home / "bench"
    out_dir.mkdir()
    cid = seed_workspace(home)
    proc, url = start_app(home)
    from ctxdistill import jobs

    job = None
    try:
        from gradio_client import Client

        t = time.perf_counter()
        Client(url, verbose=False).predict(PIRATE.read_text(), "Hi", 1, 0, 4, 0.0, api_name="/preview")
        print(f"warm-up preview (model load): {time.perf_counter() - t:.1f} s", flush=True)
        job, background = start_training(home, cid, args.train)
        if job:
            time.sleep(5)  # let the worker start loading the model
        print(f"background job: {background}" + (f" (job {job})" if job else ""), flush=True)
        cpu_line = []
        print(
            "| users | light calls | light p50 ms | light p95 ms | previews | preview p50 ms | preview p95 ms "
            "| errors | review conflicts | light/s | previews/s | training state |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in args.users or [1, 4, 16]:
            worker = job_row(home, job)["pid"] if job else None
            before = time.perf_counter(), cpu_seconds(proc.pid), cpu_seconds(worker)
            calls = run_users(url, n, args.seconds, cid, out_dir, previews=args.previews, attack=args.attack)
            wall = time.perf_counter() - before[0]
            cpu = {"app": cpu_seconds(proc.pid) - before[1], "training": cpu_seconds(worker) - before[2]}
            s = summarise(calls, args.seconds)
            row = job_row(home, job) if job else None
            state = f"{row['state']} step {row['progress_done']}" if row else ""
            print(
                f"| {n} | {s['light_calls']} | {s['light_p50_ms']} | {s['light_p95_ms']} | {s['previews']} | "
                f"{s['preview_p50_ms']} | {s['preview_p95_ms']} | {s['errors']} | {s['conflicts']} | "
                f"{s['light_per_s']} | {s['previews_per_s']} | {state} |",
                flush=True,
            )
            cpu_line.append(
                f"N={n}: app {cpu['app']:.0f} s, training {cpu['training']:.0f} s, the {n} client processes "
                f"{s['clients_cpu_s']:.0f} s of the {wall * (os.cpu_count() or 1):.0f} CPU-s the machine had"
            )
            errors = [c for c in calls if not c["ok"] and not c.get("conflict")]
            for c in errors[:3]:
                print("   error:", c["kind"], c.get("error"), flush=True)
            if args.attack:
                print(
                    f"   attacker: {s['attacks']} hostile constitutions sent, {s['attacks_refused']} refused, "
                    f"p95 {s['attack_p95_ms']} ms; flooder: {s['jobs_sent']} training jobs sent, "
                    f"{s['jobs_refused']} refused, {s['flood_workers']} worker processes started",
                    flush=True,
                )
        print("CPU time while each N ran (connecting included):\n  " + "\n  ".join(cpu_line))
    finally:
        stop_app(proc)
        if job:
            store = Store(home)
            jobs.cancel(store, job, grace_s=5)
            try:
                jobs.wait(store, job, timeout=60)
            except TimeoutError:
                pass
            store.close()
    if args.kill:
        print("kill test:", json.dumps(kill_test(home, cid, out_dir)), flush=True)
    print(f"workspace: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
