"""Sampling beside busy processes: all of torch's threads vs the threads cores.py leaves a job.

    .venv/bin/python bench/cores.py                     # 0, 1 and 2 busy processes
    .venv/bin/python bench/cores.py --profile avx2      # as on a CPU without native bf16

In one process at a job's priority (nice 10, as a local worker computes): the embedded model answers
24 prompts (16 tokens each, one batch) with every thread torch started with, then with the thread
count ``cores.CoreShare`` picks from what the busy processes use, beside 0, 1 and 2 processes that
spin at normal priority. Printed per case: tokens/s, the first token's time and the longest
decoding step of each, and the ratio (the baseline is the same run's all-threads figure).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CTXDISTILL_MODELS", str(ROOT / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sample(model, tok) -> dict:
    from ctxdistill.sampling import SamplingConfig, generate_rows

    system = "You are a pirate. Talk like one, always."
    rows = [(system, f"Tell me about topic number {i} in detail") for i in range(24)]
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = generate_rows(
        model,
        tok,
        rows,
        SamplingConfig(max_new_tokens=16, temperature=1.0),
        on_token=lambda step, _: stamps.append(time.perf_counter() - t0),
    )
    wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tokens_per_s": sum(map(len, out)) / wall, "first_s": stamps[0], "longest_step_s": max(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=("native", "avx2"), default="native")
    parser.add_argument("--busy", type=int, action="append", help="busy processes (repeatable; default 0, 1, 2)")
    args = parser.parse_args()
    if args.profile == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
    import torch

    from ctxdistill.cores import CoreShare
    from ctxdistill.models import load_model

    model, tok = load_model(None, quantize="none", precision="auto")
    most = torch.get_num_threads()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {most} threads, "
        f"{model.ctxdistill_precision.quantize} weights, {model.ctxdistill_precision.compute} compute"
    )
    counts = args.busy or [0, 1, 2]
    # the busy processes start before this one lowers its priority (they stay at normal priority), stopped
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(counts))]
    for p in busy:
        p.send_signal(signal.SIGSTOP)
    os.nice(10)
    sample(model, tok)  # warm-up
    try:
        for n in counts:
            for k, p in enumerate(busy):
                p.send_signal(signal.SIGCONT if k < n else signal.SIGSTOP)
            share = CoreShare()
            time.sleep(2.5)  # what the busy processes use, over more than CHECK_EVERY_S
            others = share.others()
            fitted = share.threads_for(others)
            torch.set_num_threads(most)
            base = sample(model, tok)
            torch.set_num_threads(fitted)
            fit = sample(model, tok)
            torch.set_num_threads(most)
            report(n, others, most, fitted, base, fit)
    finally:
        for p in busy:
            p.kill()


def report(n: int, others: float, most: int, fitted: int, base: dict, fit: dict) -> None:
    print(
        f"busy {n} (others use {others:.1f} cores): {most} threads {base['tokens_per_s']:.1f} tokens/s "
        f"(first token {base['first_s']:.1f} s, longest step {base['longest_step_s']:.2f} s); "
        f"{fitted} threads {fit['tokens_per_s']:.1f} tokens/s (first token {fit['first_s']:.1f} s, longest step "
        f"{fit['longest_step_s']:.2f} s); ratio {fit['tokens_per_s'] / base['tokens_per_s']:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
