"""Speed and memory of one distillation step against straightforward baselines, on the embedded model.

    .venv/bin/python bench/train.py                 # kl: ours vs a naive loop; sft: ours vs TRL SFTTrainer
    .venv/bin/python bench/train.py --steps 12 --quantize none

kl: ours (a run's training step: one model, adapter disabled for the teacher, the constitution
prefix's KV cache computed once, the student's default prefix once per batch, the teacher's final
hidden states along each answer kept from the sampling pass that wrote the answer, so no step runs
the teacher, batches grouped by row length, loss on answer positions only, full-vocabulary logits
in chunks, KL gradient in closed form) vs a naive loop (a separate teacher copy, the whole prompt
with the constitution recomputed every step, randomly ordered right-padded batches, full logits at
every position). Targets: >= 1.5x tokens/s and <= 0.7x peak memory. Both sample the teacher's
answers the same way before the clock starts.

The steps cover several epochs of the answers, as a run does (the default run: 80 steps of 8 over
152 answers, 4.2 epochs; here 24 steps of 8 over 48, 4 epochs).

sft: our loop vs TRL's SFTTrainer with the same model, LoRA and data (completion-only loss).

Each measurement runs in its own process so that peak memories do not mix. Peak memory is the
process's resident-set high-water mark during the steps minus its size before any model was loaded
(CPU; so the naive loop's second model counts), or torch's peak allocation (CUDA). tokens/s counts answer
tokens (the positions that carry a loss).
Each figure is given per second of wall time and per CPU-second of the measuring process (all its
threads): on a machine that other programs also use, the second is the one that holds, since a
measurement that waits for the CPU does not spend CPU time waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PeakRSS:
    """The resident set's high-water mark over a block, counted from ``base`` (the process before
    any model was loaded, so a second model copy counts too). The kernel keeps the mark (VmHWM);
    it is reset on entry, so nothing polls while the steps run."""

    def __init__(self, base: int | None = None):
        self.base = self._rss() if base is None else base
        self.peak = self.base

    @staticmethod
    def _rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _high_water() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return self

    def __exit__(self, *exc):
        self.peak = self._high_water()

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def setup(quantize: str, n: int, tokens: int):
    from ctxdistill import engine, train
    from ctxdistill.constitution import load, render
    from ctxdistill.models import load_model
    from ctxdistill.prompts import DEFAULT_PROMPTS, read_table

    c = load(REPO / "assets/constitutions/pirate.yaml")
    prompts = [r["text"] for r in read_table(DEFAULT_PROMPTS) if r.get("split") == "train"][:n]
    base, tok = load_model(quantize=quantize)
    model = train._setup_model(train.TrainConfig(), base, seed=0)
    d = engine.TeacherStudent(model, tok, render(c), teacher_cache_mb=train.TrainConfig().teacher_cache_mb)
    data = engine.sample_answers(d, prompts, train.TrainConfig(sample_tokens=tokens), seed=0)
    return c, model, tok, d, data


def measure(kind: str, quantize: str, steps: int, batch: int, n: int, tokens: int) -> dict:
    import torch

    start = PeakRSS._rss()

    c, model, tok, d, data = setup(quantize, n, tokens)
    from ctxdistill import train
    from ctxdistill.constitution import render

    cfg = train.TrainConfig(batch_size=batch)
    params, optimizer, _ = train._setup_optimizer(cfg, model)
    if kind == "trl":
        return measure_trl(model, tok, data, steps, batch, start, bf16=d.compute_dtype == torch.bfloat16)
    if kind == "naive":
        step_fn = naive_step(model, tok, render(c), data, batch, quantize)
    else:
        schedule = train.Schedule(d.row_lengths(data), batch, 0)
        cfg.loss = "sft" if kind == "ours-sft" else "kl"

        def step_fn(i):
            part = [data[j] for j in schedule.micro_batch(i)]
            n_tok = sum(len(e.answer) for e in part)
            train.backward_batch(d, cfg, part, 1 / n_tok)
            return n_tok

    step_fn(0)  # warm-up: allocator, kernels
    optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tokens_done = 0
    with PeakRSS(start) as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(1, steps + 1):
            tokens_done += step_fn(i)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else rss.mb
    return {
        "kind": kind,
        "tokens_per_s": tokens_done / elapsed,
        "tokens_per_cpu_s": tokens_done / cpu,
        "peak_mb": peak,
        "s_per_step": elapsed / steps,
    }


def naive_step(model, tok, system, data, batch, quantize):
    """The straightforward loop: a second model for the teacher, everything recomputed, padded batches."""
    import torch

    from ctxdistill.losses import kl_per_token
    from ctxdistill.models import load_model
    from ctxdistill.sampling import chat_ids

    teacher, _ = load_model(quantize=quantize)
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g).tolist()

    def padded(seqs):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        return ids, mask

    def step(i):
        part = [data[order[(i * batch + k) % len(data)]] for k in range(batch)]
        t_seqs = [chat_ids(tok, e.prompt, system) + e.answer for e in part]
        s_seqs = [chat_ids(tok, e.prompt) + e.answer for e in part]
        t_ids, t_mask = padded(t_seqs)
        s_ids, s_mask = padded(s_seqs)
        with torch.no_grad():
            t_logits = teacher(input_ids=t_ids, attention_mask=t_mask).logits
        s_logits = model(input_ids=s_ids, attention_mask=s_mask).logits
        losses = []
        for r, e in enumerate(part):
            n, lt, ls = len(e.answer), len(t_seqs[r]), len(s_seqs[r])
            losses.append(kl_per_token(t_logits[r, lt - n - 1 : lt - 1], s_logits[r, ls - n - 1 : ls - 1]))
        torch.cat(losses).mean().backward()
        return sum(len(e.answer) for e in part)

    return step


def measure_trl(model, tok, data, steps, batch, start: int, bf16: bool) -> dict:
    """TRL's SFTTrainer on the same peft model and the same (prompt, answer) pairs; with ``bf16`` it
    runs in bf16 autocast, as our loop does on the 4-bit model."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [
        {
            "prompt": [{"role": "user", "content": e.prompt}],
            "completion": [{"role": "assistant", "content": tok.decode(e.answer, skip_special_tokens=True)}],
        }
        for e in data
    ]
    args = SFTConfig(
        output_dir="/tmp/ctxdistill-bench-trl",
        per_device_train_batch_size=batch,
        max_steps=steps + 1,
        learning_rate=1e-3,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    times, cpu_times = [], []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
            cpu_times.append(time.process_time() - self.c)

    trainer.add_callback(Clock())
    tokens_per_batch = sum(len(e.answer) for e in data[:batch])
    with PeakRSS(start) as rss:
        trainer.train()
    elapsed, cpu = sum(times[1:]), sum(cpu_times[1:])  # the first step warms up
    done = tokens_per_batch * (len(times) - 1)
    return {
        "kind": "trl",
        "tokens_per_s": done / elapsed,
        "tokens_per_cpu_s": done / cpu,
        "peak_mb": rss.mb,
        "s_per_step": elapsed / max(1, len(times) - 1),
    }


def child(kind: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--quantize",
        args.quantize,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--prompts",
        str(args.prompts),
        "--tokens",
        str(args.tokens),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "4bit", "none"],
        help="auto: the precision policy's pick for this CPU (4-bit where bf16 is native)",
    )
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--child")
    p.add_argument(
        "--kl-only", action="store_true", help="measure our kl step alone (e.g. to compare --quantize choices)"
    )
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)
    if args.child:
        print(json.dumps(measure(args.child, args.quantize, args.steps, args.batch, args.prompts, args.tokens)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    r = {k: child(k, args) for k in (("ours-kl",) if args.kl_only else ("ours-kl", "naive", "ours-sft", "trl"))}
    for k, v in r.items():
        print(
            f"{k:9s} {v['tokens_per_s']:8.1f} answer tok/s  {v['tokens_per_cpu_s']:8.1f} per CPU-s  "
            f"{v['s_per_step']:6.2f} s/step  peak +{v['peak_mb']:7.1f} MB"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.kl_only:
        return

    def ratio(a, b):
        return (
            f"{r[a]['tokens_per_s'] / r[b]['tokens_per_s']:.2f}x wall, "
            f"{r[a]['tokens_per_cpu_s'] / r[b]['tokens_per_cpu_s']:.2f}x per CPU-second"
        )

    print(
        f"kl : tokens/s ratio {ratio('ours-kl', 'naive')} (target >= 1.5), "
        f"peak memory ratio {r['ours-kl']['peak_mb'] / r['naive']['peak_mb']:.2f}x (target <= 0.7)"
    )
    print(f"sft: tokens/s ratio vs TRL SFTTrainer {ratio('ours-sft', 'trl')} (target >= 1)")


if __name__ == "__main__":
    main()
