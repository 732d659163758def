"""Sampling-job speed: batched generation with the constitution's KV cache vs a one-at-a-time loop.

    .venv/bin/python bench/generate.py                 # 64 prompts, 48 new tokens, the embedded model
    .venv/bin/python bench/generate.py --prompts 16 --max-new-tokens 16

Both sides answer the same train prompts of the shipped set, greedily, once with
the pirate constitution and once without it (what the sampling job does):

* job      — `sampling.run_generate`, the sampling job's own code: batches of
             prompts, one forward per step, the constitution prefix encoded once
             and its key/value cache reused, answers written to a scratch store.
* baseline — one prompt at a time, `model.generate` on the full chat each time,
             so the constitution is re-encoded for every prompt.

Each side runs in its own child process, so the peak resident memory
(ru_maxrss, model weights included) belongs to that side alone; the figure
after "+" is the growth over the RSS right after the model loaded.
Prints generated tokens per second for both and their ratio, by wall clock and
by the process's CPU time: on a shared machine the load changes between the
two sides, and CPU time is the steadier measure of the work each side does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PIRATE = REPO / "assets" / "constitutions" / "pirate.yaml"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prompts(n: int) -> list[str]:
    from ctxdistill.prompts import DEFAULT_PROMPTS

    rows = [json.loads(line) for line in DEFAULT_PROMPTS.read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows if r.get("split", "train") == "train"][:n]


def run_job(model, tokenizer, texts, args) -> tuple[int, list[str]]:
    from ctxdistill.constitution import content_hash, load, to_dict
    from ctxdistill.generate import GenerateConfig, run_generate
    from ctxdistill.store import Store

    store = Store(tempfile.mkdtemp(prefix="bench-ws-"))
    c = load(PIRATE)
    cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
    store.add_prompts("bench", [{"text": t} for t in texts])
    cfg = GenerateConfig(
        set_name="bench",
        constitution_id=cid,
        batch_size=args.batch_size,
        sampling={"max_new_tokens": args.max_new_tokens},
    )
    result = run_generate(store, cfg, model, tokenizer)
    return result["new_tokens"], [s["prompted"] for s in store.list_samples()]


def run_loop(model, tokenizer, texts, args) -> tuple[int, list[str]]:
    import torch

    from ctxdistill.constitution import load, render
    from ctxdistill.sampling import chat_ids, eos_ids

    c = load(PIRATE)
    stop = sorted(eos_ids(model, tokenizer))
    tokens, answers = 0, []
    for text in texts:
        for system, examples in ((render(c), c.examples), (None, ())):
            ids = torch.tensor([chat_ids(tokenizer, text, system, examples)])
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = [t for t in out[0, ids.shape[1] :].tolist() if t not in stop]
            tokens += len(new)
            if system is not None:
                answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return tokens, answers


def child(args) -> None:
    import torch

    from ctxdistill.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model()
    texts = prompts(args.prompts)
    after_load = rss_mb()
    fn = run_job if args.side == "job" else run_loop
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens, answers = fn(model, tokenizer, texts, args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "tokens": tokens,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": peak,
                "after_load_mb": after_load,
                "answers": answers,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch in the job")
    parser.add_argument("--side", choices=("job", "baseline"), help=argparse.SUPPRESS)
    add_profile_flag(parser)
    args = parser.parse_args()
    apply_profile(args)
    if args.side:
        return child(args)
    results = {}
    for side in ("job", "baseline"):
        cmd = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--prompts",
            str(args.prompts),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            str(args.batch_size),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    job, base = results["job"], results["baseline"]
    same = sum(a == b for a, b in zip(job["answers"], base["answers"]))
    print(f"{args.prompts} prompts x (with + without the constitution), greedy, <= {args.max_new_tokens} new tokens")
    for name, r in (("job (batched, prefix KV reused)", job), ("baseline (one at a time)", base)):
        print(
            f"  {name:33s} {r['tokens']:6d} tokens in {r['seconds']:7.1f} s = {r['tokens'] / r['seconds']:7.1f} tok/s"
            f" ({r['tokens'] / r['cpu_seconds']:.1f} per CPU-s)   peak RSS {r['peak_rss_mb']:6.0f} MB "
            f"(+{r['peak_rss_mb'] - r['after_load_mb']:.0f} MB over the loaded model)"
        )
    print(f"  identical prompted answers: {same}/{len(job['answers'])}")
    ratio = (job["tokens"] / job["seconds"]) / (base["tokens"] / base["seconds"])
    cpu_ratio = (job["tokens"] / job["cpu_seconds"]) / (base["tokens"] / base["cpu_seconds"])
    print(f"speed-up (generated tokens/s, job / baseline): {ratio:.2f}x wall clock, {cpu_ratio:.2f}x CPU time")


if __name__ == "__main__":
    main()
