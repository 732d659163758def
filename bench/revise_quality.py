"""Critique-and-revise quality on the embedded model: how many revisions are worse than their start.

    .venv/bin/python bench/revise_quality.py                  # 24 prompts, pirate and concise
    .venv/bin/python bench/revise_quality.py --prompts 8 --variants current,new

The sampling job answers the first train prompts of the shipped set with each constitution (once
with it, once without), then every variant of the revise job runs on a copy of those samples.
Per variant it prints, over all samples of both constitutions:

* worse revisions — rounds whose model revision is worse than the answer it revised
                    (curate.revision_worse: a loop, lost content, a check it newly fails);
* worse finals    — samples whose final text carries the "worse" flag (what accept-all would
                    otherwise have let through, and what Review shows);
* clean finals    — samples with no flag at all ("accept every pending sample with no flag");
* check pass      — finals that pass every principle check.

`--json PATH` also writes every variant's chains, to read the texts behind the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONSTITUTIONS = ("pirate", "concise")
VARIANTS = {
    "current": {"start": "unprompted", "rounds": 1, "keep_if_worse": False},
    "prompted": {"start": "prompted", "rounds": 1, "keep_if_worse": False},
    "unprompted+keep": {"start": "unprompted", "rounds": 1, "keep_if_worse": True},
    "new": {"start": "prompted", "rounds": 1, "keep_if_worse": True},
    "new+2rounds": {"start": "prompted", "rounds": 2, "keep_if_worse": True},
}


def sample(home: Path, n: int, max_new_tokens: int, model, tokenizer) -> dict[str, int]:
    from ctxdistill.constitution import content_hash, load, to_dict
    from ctxdistill.generate import GenerateConfig, run_generate
    from ctxdistill.prompts import ensure_default_prompts
    from ctxdistill.store import Store

    with Store(home) as store:
        ensure_default_prompts(store)
        ids = {}
        for name in CONSTITUTIONS:
            c = load(REPO / "assets" / "constitutions" / f"{name}.yaml")
            ids[name] = store.save_constitution(c.name, to_dict(c), content_hash(c))
            run_generate(
                store,
                GenerateConfig(constitution_id=ids[name], limit=n, sampling={"max_new_tokens": max_new_tokens}),
                model,
                tokenizer,
            )
    return ids


def worse_rounds(s: dict, checks) -> tuple[int, int]:
    """(rounds whose model revision was worse than what it revised, rounds)."""
    from ctxdistill import curate

    answer, worse = curate.start_answer(s, s["meta"]["revise_start"]), 0
    for step in s["chain"]:
        worse += bool(curate.revision_worse(answer, step.get("discarded") or step["revision"], checks))
        answer = step["revision"]
    return worse, len(s["chain"])


def measure(home: Path, ids: dict[str, int], settings: dict, max_new_tokens: int, model, tokenizer) -> dict:
    from ctxdistill import curate
    from ctxdistill.constitution import from_row
    from ctxdistill.revise import ReviseConfig, run_revise
    from ctxdistill.store import Store

    figures = {"worse_rounds": 0, "rounds": 0, "worse_finals": 0, "clean": 0, "pass": 0, "samples": 0}
    chains = []
    started = time.monotonic()
    with Store(home) as store:
        for name, cid in ids.items():
            cfg = ReviseConfig(constitution_id=cid, sampling={"max_new_tokens": max_new_tokens}, **settings)
            run_revise(store, cfg, model, tokenizer)
            checks = curate.principle_checks(from_row(store.get_constitution(cid)))
            for s in store.list_samples(constitution_id=cid):
                worse, rounds = worse_rounds(s, checks)
                figures["worse_rounds"] += worse
                figures["rounds"] += rounds
                figures["worse_finals"] += "worse" in s["flags"]
                figures["clean"] += not s["flags"]
                figures["pass"] += all(check.passes(s["final"]) for _, check in checks)
                figures["samples"] += 1
                chains.append(
                    {
                        "constitution": name,
                        "prompt": s["prompt"],
                        "unprompted": s["unprompted"],
                        "prompted": s["prompted"],
                        "chain": s["chain"],
                        "final": s["final"],
                        "flags": s["flags"],
                    }
                )
    return {**figures, "seconds": round(time.monotonic() - started), "chains": chains}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=24, help="train prompts of the default set per constitution")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--json", help="write every variant's chains here")
    add_profile_flag(ap)
    args = ap.parse_args()
    apply_profile(args)
    from ctxdistill.models import load_model

    model, tokenizer = load_model()
    root = Path(tempfile.mkdtemp(prefix="bench-revise-"))
    ids = sample(root / "sampled", args.prompts, args.max_new_tokens, model, tokenizer)
    print(
        f"{args.prompts} prompts x {len(CONSTITUTIONS)} constitutions ({', '.join(CONSTITUTIONS)}), "
        f"{args.max_new_tokens} new tokens, greedy"
    )
    print(
        f"{'variant':18} {'settings':44} {'worse revisions':>16} {'worse finals':>13} {'clean':>7} {'check pass':>11}"
    )
    out = {}
    for name in args.variants.split(","):
        home = root / name
        shutil.copytree(root / "sampled", home)
        r = out[name] = measure(home, ids, VARIANTS[name], args.max_new_tokens, model, tokenizer)
        n = r["samples"]
        settings = " ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
        print(
            f"{name:18} {settings:44} {r['worse_rounds']:>4}/{r['rounds']:<3} {r['worse_rounds'] / r['rounds']:5.0%} "
            f"{r['worse_finals'] / n:>13.0%} {r['clean'] / n:>7.0%} {r['pass'] / n:>11.0%}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
