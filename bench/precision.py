"""One forward pass of the embedded model in each precision, on this CPU (and under --profile avx2).

    .venv/bin/python bench/precision.py                 # native
    .venv/bin/python bench/precision.py --profile avx2  # as on a CPU without native bf16

Times one forward of 8 x 96 tokens (the best of 3 after a warm-up) with float32 weights, bf16
weights, 4-bit NF4 with bf16 compute and 4-bit NF4 with float32 compute, and prints each as a
ratio to float32. Under the AVX2 profile bf16 must come out >= 4x slower than float32, or the
profile does not reproduce a CPU without native bf16 (the script says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

MODES = (
    ("float32", "none", "fp32"),
    ("bf16", "none", "bf16"),
    ("4-bit, bf16 compute", "4bit", "bf16"),
    ("4-bit, fp32 compute", "4bit", "fp32"),
)


def forward_s(quantize: str, precision: str, batch: int, tokens: int) -> float:
    import torch

    from ctxdistill.models import load_model

    model, _ = load_model(quantize=quantize, precision=precision)
    ids = torch.randint(100, 20_000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for _ in range(4):
            t0 = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    add_profile_flag(parser)
    args = parser.parse_args()
    apply_profile(args)
    times = {label: forward_s(q, p, args.batch, args.tokens) for label, q, p in MODES}
    base = times["float32"]
    for label, seconds in times.items():
        print(f"  {label:22s} {seconds:6.2f} s  ({seconds / base:.1f}x float32)")
    ratio = times["bf16"] / base
    from ctxdistill.precision import detect

    if not detect().native_bf16 and ratio < 4:
        print(f"the profile does NOT reproduce a CPU without native bf16: bf16 is only {ratio:.1f}x float32")
    else:
        print(f"bf16 / float32 = {ratio:.1f}x; policy's pick: {'bf16' if detect().native_bf16 else 'float32'}")


if __name__ == "__main__":
    main()
