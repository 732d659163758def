"""Shared by the bench scripts: ``--profile avx2`` and the line that says what a figure ran on.

A machine with AMX or AVX512-BF16 computes bf16 natively; most laptops do not. ``--profile avx2``
re-runs the script with ATen and oneDNN held to AVX2 (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``), so that one machine measures both kinds. bench/precision.py checks
that the profile really takes native bf16 away (a bf16 forward >= 4x a float32 one).
"""

from __future__ import annotations

import os
import sys

AVX2_PROFILE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def add_profile_flag(parser) -> None:
    parser.add_argument(
        "--profile",
        choices=("native", "avx2"),
        default="native",
        help="avx2: hold ATen and oneDNN to AVX2, as on a CPU without native bf16",
    )


def apply_profile(args) -> None:
    """Re-execute this script under the AVX2 profile if asked (the variables must be set before
    torch is imported), then print the CPU capability and the precision the policy runs with."""
    if args.profile == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_PROFILE.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_PROFILE})
    from ctxdistill.precision import profile_line

    print(f"profile {args.profile}: {profile_line()}", flush=True)
