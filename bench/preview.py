"""Batched preview generation vs one prompt at a time, on the embedded model.

    .venv/bin/python bench/preview.py [--prompts 32] [--max-new-tokens 48]

Generates greedy answers for N prompts from the shipped set, each with and without the pirate
constitution, twice: (a) one `model.generate` call per prompt and condition, (b) one batch through
`generate_rows` (left padding, shared-prefix KV cache, one forward per step for all rows). Checks
that the greedy outputs are token-identical and prints the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

os.environ.setdefault("CTXDISTILL_MODELS", str(ROOT / ".cache" / "models"))

from ctxdistill import constitution as cmod  # noqa: E402
from ctxdistill.models import load_model  # noqa: E402
from ctxdistill.sampling import SamplingConfig, chat_ids, eos_ids, generate_rows  # noqa: E402


def one_at_a_time(model, tokenizer, rows, max_new_tokens):
    stop = eos_ids(model, tokenizer)
    out = []
    for system, prompt in rows:
        ids = torch.tensor([chat_ids(tokenizer, prompt, system)])
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        out.append(gen[: next((i for i, t in enumerate(gen) if t in stop), len(gen))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    add_profile_flag(parser)
    args = parser.parse_args()
    apply_profile(args)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    system = cmod.render(cmod.load(ROOT / "assets" / "constitutions" / "pirate.yaml"))
    lines = (ROOT / "assets" / "prompts" / "default.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["text"] for line in lines[: args.prompts]]
    rows = [(system, p) for p in prompts] + [(None, p) for p in prompts]

    t0 = time.perf_counter()
    baseline = one_at_a_time(model, tokenizer, rows, args.max_new_tokens)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = generate_rows(model, tokenizer, rows, SamplingConfig(max_new_tokens=args.max_new_tokens))
    t_batch = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(baseline, batched))
    tokens = sum(len(b) for b in batched)
    print(
        f"rows: {len(rows)} ({args.prompts} prompts x 2 conditions), {tokens} tokens generated, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"one at a time: {t_base:.1f} s   batched: {t_batch:.1f} s")
    print(f"token-identical greedy outputs: {same}/{len(rows)}")
    print(f"speed-up: {t_base / t_batch:.2f}x")


if __name__ == "__main__":
    main()
