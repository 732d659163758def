"""Gradient reduction across processes: DDP with ``no_sync`` on the non-final micro-steps (the
training loop's way, through ``accelerator.no_sync``) against one hand-written flat all-reduce of
the adapter's gradients per optimiser step.

    .venv/bin/python bench/allreduce.py                  # 2 CPU processes (gloo), embedded model + LoRA
    .venv/bin/python bench/allreduce.py --profile avx2

Both variants run in the same two processes on the same LoRA-wrapped embedded model, with the same
micro-batches (random tokens, loss = next-token cross-entropy), alternating in rounds so that other
load on the machine falls on both alike. It prints seconds per optimiser step of each and the ratio.
Only the adapter's parameters train, so either way one reduction of a few MB happens per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402


def micro_batches(vocab: int, n: int, batch: int, tokens: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, tokens), generator=g) for _ in range(n)]


def step_flat(model, params, optimizer, batches):
    """Backward on every micro-batch, then one all-reduce of the flattened gradients (the hand-written alternative)."""
    import torch
    import torch.distributed as dist

    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
    grads = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(grads)
    offset = 0
    for p in params:
        p.grad.copy_(grads[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_ddp(ddp, optimizer, batches):
    """DDP: no_sync on every micro-batch but the last, whose backward all-reduces in buckets."""
    import contextlib

    for k, ids in enumerate(batches):
        with ddp.no_sync() if k < len(batches) - 1 else contextlib.nullcontext():
            ddp(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def worker(rank: int, args) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ctxdistill.models import load_model
    from ctxdistill.train import _setup_model
    from ctxdistill.train_config import TrainConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    base, _ = load_model(quantize="none", precision="fp32", device="cpu")
    model = _setup_model(TrainConfig(), base, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ddp = DistributedDataParallel(model)
    batches = micro_batches(base.config.vocab_size, args.grad_accum, args.batch, args.tokens, seed=rank)
    times = {"flat": [], "ddp": []}
    for r in range(args.rounds + 1):  # round 0 warms both up
        for name in ("flat", "ddp") if r % 2 else ("ddp", "flat"):
            dist.barrier()
            t0 = time.perf_counter()
            step_flat(model, params, optimizer, batches) if name == "flat" else step_ddp(ddp, optimizer, batches)
            dist.barrier()
            if r:
                times[name].append(time.perf_counter() - t0)
    if rank == 0:
        flat, ddp_s = (sum(times[k]) / len(times[k]) for k in ("flat", "ddp"))
        print(
            f"{args.processes} processes, {args.grad_accum} micro-batches of {args.batch}x{args.tokens} tokens, "
            f"{sum(p.numel() for p in params) / 1e6:.1f}M adapter parameters, {args.rounds} rounds"
        )
        print(f"flat all-reduce {flat:.2f} s/step · DDP no_sync {ddp_s:.2f} s/step · flat/DDP {flat / ddp_s:.2f}")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    mp.spawn(worker, args=(args,), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
