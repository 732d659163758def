"""The strength dial on the pirate run: gap closed, capability and the principle checks at each
strength of the adapter (0 = the base model, 1 = as trained, up to 1.5).

    .venv/bin/python bench/strength.py                       # a default kl run, then the sweep
    .venv/bin/python bench/strength.py --adapter DIR         # the sweep over an existing pirate run's adapter
    .venv/bin/python bench/strength.py --adapter DIR --only gap --heldout 16   # gap closed alone, on 16 prompts
    .venv/bin/python bench/strength.py --profile avx2

On the embedded SmolLM2-135M with assets/constitutions/pirate.yaml and the default TrainConfig
(as bench/distill.py): gap closed = 1 - KL(teacher || student) / KL(teacher || base) on every
held-out prompt (fresh teacher samples, the same for every strength); capability = accuracy of
greedy answers on the shipped capability set (ctxdistill/capability.py), with its 95% interval;
checks = pass rate of the constitution's automatic checks on greedy answers to the first
``--check-prompts`` held-out prompts. The teacher's capability and checks are printed as references.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402
from distill import pirate_workspace, timed_run  # noqa: E402

from ctxdistill import (  # noqa: E402
    capability,
    engine,
    train,  # noqa: E402
)
from ctxdistill.adapters import RUN_FILE, load_adapter, scaled  # noqa: E402
from ctxdistill.constitution import render  # noqa: E402
from ctxdistill.engine import sample_rows  # noqa: E402
from ctxdistill.models import load_model  # noqa: E402
from ctxdistill.prompts import ensure_default_prompts  # noqa: E402
from ctxdistill.sampling import SamplingConfig  # noqa: E402

STRENGTHS = (0.0, 0.5, 1.0, 1.25, 1.5)


def checks(constitution, texts: list[str]) -> dict[str, float]:
    return {p.id: sum(p.check.passes(t) for t in texts) / len(texts) for p in constitution.principles if p.check}


def behaviour(model, tok, constitution, items, prompts: list[str], system: str | None) -> dict:
    """Capability accuracy and check pass rates of the model as it is, with ``system`` as system prompt."""
    t0 = time.perf_counter()
    examples = constitution.examples if system else ()
    acc = capability.accuracy(capability.score(model, tok, items, system=system, examples=examples))
    ids = sample_rows(
        model,
        tok,
        [(system, p, i) for i, p in enumerate(prompts)],
        SamplingConfig(max_new_tokens=40, temperature=0.0),
        examples=examples,
    )
    return {
        "capability": acc,
        "checks": checks(constitution, [tok.decode(a, skip_special_tokens=True) for a in ids]),
        "seconds": time.perf_counter() - t0,
    }


def behaviour_sweep(model, tok, c, pair, prompts: list[str]) -> None:
    """Capability and checks of the teacher, then of the student at every strength."""
    items = capability.load_items()
    with pair.teacher_mode():
        teacher = behaviour(model, tok, c, items, prompts, render(c))
    print(
        f"teacher (constitution in the prompt), {len(items)} capability items: "
        f"capability {teacher['capability']['value']:.3f} "
        f"[{teacher['capability']['ci'][0]:.3f}, {teacher['capability']['ci'][1]:.3f}], checks "
        + ", ".join(f"{k} {v:.0%}" for k, v in teacher["checks"].items()),
        flush=True,
    )
    print("strength | capability [95% CI] | checks | seconds")
    for strength in STRENGTHS:
        with scaled(model, strength):
            b = behaviour(model, tok, c, items, prompts, None)
        acc = b["capability"]
        print(
            f"{strength:4.2f} | {acc['value']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] | "
            + ", ".join(f"{k} {v:.0%}" for k, v in b["checks"].items())
            + f" | {b['seconds']:.0f}",
            flush=True,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", help="sweep this pirate run's adapter instead of training a default run")
    p.add_argument("--check-prompts", type=int, default=16, help="held-out prompts whose greedy answers are checked")
    p.add_argument(
        "--heldout", type=int, default=0, help="measure gap closed on the first N held-out prompts (0 = all)"
    )
    p.add_argument("--only", choices=("all", "gap"), default="all", help="gap: the gap-closed column alone")
    p.add_argument("--keep", help="keep the workspace here instead of a temporary directory")
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)

    home, store, c, cid = pirate_workspace(args.keep)
    cfg = train.TrainConfig(constitution_id=cid)
    if args.adapter:
        adapter = Path(args.adapter)
        info = json.loads((adapter / RUN_FILE).read_text())
    else:
        print(f"default kl run: {cfg.steps} steps, batch {cfg.batch_size}, r {cfg.lora_r}")
        result, times = timed_run(store, cfg, home / "runs" / "kl")
        print(f"  wall {times['total_s']:.0f} s; the run's own held-out gap closed {result['gap_closed']:.3f}")
        adapter, info = home / "runs" / "kl" / "adapter", result
    ensure_default_prompts(store)
    prompts = [r["text"] for r in store.get_prompts("default", split="heldout")][: args.heldout or None]
    model, tok = load_model(quantize=info.get("quantize", "auto"), precision=info.get("precision", "auto"))
    model = load_adapter(model, adapter)
    model.eval()
    pair = engine.TeacherStudent(model, tok, render(c), c.examples)
    data = engine.sample_answers(pair, prompts, train.TrainConfig(sample_tokens=cfg.sample_tokens), seed=12345)
    with pair.teacher_mode():
        kl_base = engine.heldout_kl(pair, data)
    print(f"{len(prompts)} held-out prompts, KL(teacher || base) {kl_base:.4f} nats/token")
    # the KL column first for every strength (cheap), then the greedy answers (capability and checks)
    print("strength | KL(teacher || student) | gap closed | seconds")
    for strength in STRENGTHS:
        with scaled(model, strength):
            t0 = time.perf_counter()
            kl = engine.heldout_kl(pair, data)
        print(f"{strength:4.2f} | {kl:.4f} | {1 - kl / kl_base:.3f} | {time.perf_counter() - t0:.0f}", flush=True)
    if args.only == "all":
        behaviour_sweep(model, tok, c, pair, prompts[: args.check_prompts])
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; workspace {home}")


if __name__ == "__main__":
    main()
