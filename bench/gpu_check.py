"""The CUDA path end to end, in one go, with the same figures from the CPU beside it.

    python bench/gpu_check.py                # on a machine with a CUDA GPU; no network needed
    python bench/gpu_check.py --cpu-only     # the CPU half alone (what a machine without a GPU can check)

Loads the embedded model through the precision policy, previews 8 prompts with and without the
pirate constitution, trains 40 kl steps on 64 train prompts and measures the gap closed on 16
held-out prompts; once on the GPU and once on the CPU. Prints, for each device: the policy's
pick and why, preview time, training answer tokens/s, peak memory (torch's allocation on the GPU,
the process's resident set on the CPU), wall time and gap closed. Meant to finish in under five
minutes on one GPU plus a multi-core CPU. A failure prints its traceback and exits non-zero, so
that whatever breaks on a real GPU is visible at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ctxdistill import train  # noqa: E402
from ctxdistill.constitution import content_hash, load, render, to_dict  # noqa: E402
from ctxdistill.models import load_model, param_count  # noqa: E402
from ctxdistill.precision import policy, profile_line  # noqa: E402
from ctxdistill.prompts import ensure_default_prompts  # noqa: E402
from ctxdistill.sampling import SamplingConfig, preview  # noqa: E402
from ctxdistill.store import Store  # noqa: E402

PIRATE = REPO / "assets/constitutions/pirate.yaml"


def check(device: str, home: Path) -> dict:
    store = Store(home / device)
    c = load(PIRATE)
    cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
    ensure_default_prompts(store)
    chosen = policy(device, params=param_count())
    print(f"\n== {device}: {chosen.label} ({chosen.reason})", flush=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, tok = load_model(device=device)
    prompts = [p["text"] for p in store.get_prompts("default", split="heldout")][:8]
    t0 = time.perf_counter()
    shown = preview(model, tok, render(c), prompts, SamplingConfig(max_new_tokens=32))
    preview_s = time.perf_counter() - t0
    print(
        f"  preview of {len(prompts)} prompts x 2 conditions, 32 tokens: {preview_s:.1f} s; "
        f"first teacher answer: {shown.prompted[0][0][:80]!r}",
        flush=True,
    )
    del model
    speeds, peaks = [], []

    def log(values, step):
        if "tokens_per_s" in values:
            speeds.append(values["tokens_per_s"])
            peaks.append(values["peak_mem_mb"])

    cfg = train.TrainConfig(constitution_id=cid, steps=40, max_prompts=64, eval_prompts=16, eval_every=10)
    t0 = time.perf_counter()
    result = train.run(
        cfg, store, home / device / "run", train.Hooks(log=log), accelerator=train.setup_accelerator(device)
    )
    wall = time.perf_counter() - t0
    out = {
        "device": device,
        "precision": chosen.to_dict(),
        "preview_s": preview_s,
        "train_wall_s": wall,
        "answer_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "peak_mem_mb": max(peaks) if peaks else None,
        "gap_closed": result["gap_closed"],
        "heldout_kl": [result["heldout_kl_before"], result["heldout_kl_after"]],
    }
    print(
        f"  40 kl steps: {wall:.0f} s wall (sampling included), "
        f"{out['answer_tokens_per_s']:.0f} answer tok/s (median step), "
        f"peak {out['peak_mem_mb']:.0f} MB; held-out KL {result['heldout_kl_before']:.3f} -> "
        f"{result['heldout_kl_after']:.3f} on 16 prompts: gap closed {result['gap_closed']:.2f}",
        flush=True,
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU half")
    args = parser.parse_args()
    print(profile_line())
    devices = ["cpu"] if args.cpu_only else ["cuda", "cpu"]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device here: run with --cpu-only, or on a machine with a GPU")
        return 2
    if "cuda" in devices:
        props = torch.cuda.get_device_properties(0)
        print(
            f"GPU: {props.name}, {props.total_memory // 2**20} MB, bf16 {torch.cuda.is_bf16_supported()}; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    with tempfile.TemporaryDirectory(prefix="ctxdistill-gpu-check-") as home:
        results = [check(d, Path(home)) for d in devices]
    if len(results) == 2:
        gpu, cpu = results
        print(
            f"\nGPU vs CPU: {gpu['answer_tokens_per_s'] / cpu['answer_tokens_per_s']:.1f}x answer tok/s, "
            f"preview {cpu['preview_s'] / gpu['preview_s']:.1f}x faster, "
            f"gap closed {gpu['gap_closed']:.2f} vs {cpu['gap_closed']:.2f}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
