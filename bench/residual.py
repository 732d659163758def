"""Where a student's remaining divergence sits: KL(teacher‖x) by answer position, for the base and
the student, on a finished run's own held-out answers (first turn) and held-out conversations
(second turn), as the run measured them.

    .venv/bin/python bench/residual.py --workspace /tmp/hold1 --run 1

A run kept by ``bench/hold.py --keep DIR`` has both sets in runs/<id>/data.json (the second turn
only with multi-turn on). Printed per set: the mean KL of base and student at a few answer
positions, over all positions, and the gap closed; then each answer's mean and its three tokens
the student is furthest from the teacher on. A residual spread evenly over the positions (a floor)
is told apart from one at a few tokens (a behaviour not learnt, such as an answer's first word).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from ctxdistill import adapters  # noqa: E402
from ctxdistill.constitution import from_row, render  # noqa: E402
from ctxdistill.evaluate import score_along  # noqa: E402
from ctxdistill.models import default_models_dir, load_model  # noqa: E402
from ctxdistill.store import Store  # noqa: E402

POSITIONS = (0, 1, 2, 3, 5, 10, 20, 30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--answers", type=int, default=12, help="answers per set (default 12)")
    args = p.parse_args()
    store = Store(Path(args.workspace))
    job = store.get_job(args.run)
    c = from_row(store.get_constitution(job["config"]["constitution_id"]))
    base, tok = load_model(
        job["config"].get("model") or None,
        quantize=job["config"].get("quantize", "auto"),
        precision=job["config"].get("precision", "auto"),
        device="cpu",
        models_dir=default_models_dir(store.home),
    )
    model = adapters.load_adapter(base, adapters.run_adapter(store, args.run))
    data = json.loads((store.runs_dir / str(args.run) / "data.json").read_text())
    for name, title in (("heldout", "first turn"), ("second_turn", "second turn")):
        rows = data.get(name, [])[: args.answers]
        if not rows:
            continue
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        kl = score_along(model, tok, render(c), c.examples, prompts, answers, {"student": "default"}, 6)
        print(f"{title}: {len(rows)} held-out answers")
        for pos in POSITIONS:
            at = {who: [a[pos] for a in per if len(a) > pos] for who, per in kl.items()}
            if at["base"]:
                print(f"  position {pos:2d}: base {np.mean(at['base']):.3f}  student {np.mean(at['student']):.3f}")
        total = {who: sum(map(sum, per)) / sum(map(len, per)) for who, per in kl.items()}
        print(
            f"  all positions: base {total['base']:.3f}  student {total['student']:.3f} nats/token, gap closed "
            f"{1 - total['student'] / total['base']:.2f}"
        )
        for i, (b, s) in enumerate(zip(kl["base"], kl["student"])):
            worst = sorted(range(len(s)), key=lambda k: -s[k])[:3]
            tokens = ", ".join(f"{tok.decode([answers[i][k]])!r} {s[k]:.2f} (base {b[k]:.2f})" for k in worst)
            print(f"  answer {i:2d}: base {np.mean(b):.3f} student {np.mean(s):.3f} · furthest: {tokens}")


if __name__ == "__main__":
    main()
