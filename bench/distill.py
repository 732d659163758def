"""The quality bar: how much of the teacher-student KL gap a default run closes, and kl vs sft.

    .venv/bin/python bench/distill.py               # default kl run, then sft at equal steps and equal wall time
    .venv/bin/python bench/distill.py --only kl
    .venv/bin/python bench/distill.py --only kl --profile avx2   # as on a CPU without native bf16

On the embedded SmolLM2-135M with assets/constitutions/pirate.yaml, trained on the default prompt
set's train split with the default TrainConfig (teacher sampling included in the time), then
measured on *all* held-out prompts (fresh teacher samples, never trained on):
gap closed = 1 - KL(teacher || student) / KL(teacher || base). Target: >= 0.8 within 10 minutes.
The sft runs reuse the kl run's teacher samples, so the losses see the same data.
Prints the student's greedy answers without the constitution, to see the persona.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

from ctxdistill import (  # noqa: E402
    engine,
    estimate,
    train,  # noqa: E402
)
from ctxdistill.adapters import load_adapter  # noqa: E402
from ctxdistill.constitution import content_hash, load, render, to_dict  # noqa: E402
from ctxdistill.precision import policy  # noqa: E402
from ctxdistill.store import Store  # noqa: E402


def timed_run(store, cfg: train.TrainConfig, run_dir: Path) -> tuple[dict, dict]:
    marks = {"start": time.perf_counter()}

    def progress(done, total, message):
        if done >= 1 and "trained" not in marks:
            marks["trained"] = time.perf_counter()  # first step done: sampling and setup are over
        eta = re.search(r"step (\d+)/\d+ .*ETA (?:(\d+)m )?(\d+)s", message)
        if eta and int(eta.group(1)) == max(1, cfg.steps // 8) and "eta" not in marks:  # the ETA an eighth in
            marks["eta"] = (time.perf_counter(), 60 * int(eta.group(2) or 0) + int(eta.group(3)))
        print(f"\r  {message[:100]:100s}", end="", flush=True)

    result = train.run(cfg, store, run_dir, train.Hooks(progress=progress))
    marks["end"] = time.perf_counter()
    print()
    times = {"total_s": marks["end"] - marks["start"], "setup_s": marks.get("trained", marks["end"]) - marks["start"]}
    if "eta" in marks:
        at, said = marks["eta"]
        times["eta_ratio"] = said / max(marks["end"] - at, 1e-9)
        print(
            f"  ETA shown at step {max(1, cfg.steps // 8)}: {said} s; the rest took {marks['end'] - at:.0f} s "
            f"(ratio {times['eta_ratio']:.2f})"
        )
    return result, times


def full_heldout(store, cid: int, adapters: dict[str, Path], quantize: str, precision: str, tokens: int) -> dict:
    """KL(teacher || base) and KL(teacher || student) for each adapter, on every held-out prompt."""
    from ctxdistill.models import load_model
    from ctxdistill.sampling import SamplingConfig, generate_rows

    c = load(REPO / "assets/constitutions/pirate.yaml")
    prompts = [p["text"] for p in store.get_prompts("default", split="heldout")]
    base, tok = load_model(quantize=quantize, precision=precision)
    out = {}
    model = base
    for name, path in adapters.items():
        model = load_adapter(model, path, name=name)
    d = engine.TeacherStudent(model, tok, render(c), c.examples)
    data = engine.sample_answers(d, prompts, train.TrainConfig(sample_tokens=tokens), seed=12345)
    with d.teacher_mode():
        out["base"] = engine.heldout_kl(d, data)
    for name in adapters:
        model.set_adapter(name)
        out[name] = engine.heldout_kl(d, data)
    answers = {}
    for name in adapters:
        model.set_adapter(name)
        ids = generate_rows(model, tok, [(None, p) for p in prompts[:4]], SamplingConfig(max_new_tokens=40))
        answers[name] = [tok.decode(a, skip_special_tokens=True) for a in ids]
    return {"kl": out, "n_prompts": len(prompts), "answers": answers, "prompts": prompts[:4]}


def pirate_workspace(keep: str | None):
    """(home, store, constitution, its version id): a workspace (temporary unless ``keep``) with the pirate
    constitution saved; prints the machine's load."""
    home = Path(keep or tempfile.mkdtemp(prefix="ctxdistill-bench-"))
    store = Store(home)
    c = load(REPO / "assets/constitutions/pirate.yaml")
    cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared)")
    return home, store, c, cid


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["kl", "all"], default="all")
    p.add_argument("--keep", help="keep the workspace here instead of a temporary directory")
    add_profile_flag(p)
    args = p.parse_args()
    apply_profile(args)
    home, store, c, cid = pirate_workspace(args.keep)
    cfg = train.TrainConfig(constitution_id=cid)
    cal = estimate.calibrate(quantize=cfg.quantize, precision=cfg.precision)
    n_train, n_heldout = estimate.run_size(cfg, store)
    predicted = estimate.predict_train(cal, cfg, n_train, n_heldout)
    print("predicted before the run (calibration): " + ", ".join(f"{k} {v:.0f} s" for k, v in predicted.items()))
    print(
        f"kl run, default settings: {cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr}, r {cfg.lora_r}, "
        f"{cfg.sample_tokens}-token samples, {policy(None, cfg.quantize, cfg.precision).label}"
    )
    kl, kl_time = timed_run(store, cfg, home / "runs" / "kl")
    print(
        f"  predicted {predicted['total']:.0f} s, measured {kl_time['total_s']:.0f} s "
        f"(ratio {predicted['total'] / kl_time['total_s']:.2f})"
    )
    print(
        f"  wall {kl_time['total_s']:.0f} s (sampling + setup {kl_time['setup_s']:.0f} s); "
        f"held-out ({kl['n_heldout']} prompts) "
        f"KL {kl['heldout_kl_before']:.4f} -> {kl['heldout_kl_after']:.4f}, gap closed {kl['gap_closed']:.3f}"
    )
    adapters = {"kl": home / "runs" / "kl" / "adapter"}
    rows = [("kl", cfg.steps, kl_time["total_s"] - kl_time["setup_s"], kl)]
    if args.only == "all":
        train_s = kl_time["total_s"] - kl_time["setup_s"]
        for label, steps in (("sft-equal-steps", cfg.steps), ("sft-equal-time", None)):
            run_dir = home / "runs" / label
            run_dir.mkdir(parents=True)
            shutil.copy(home / "runs" / "kl" / "data.json", run_dir / "data.json")  # the same teacher samples
            if steps is None:  # as many sft steps as fit in the kl run's training time
                per_step = rows[1][2] / cfg.steps
                steps = max(cfg.steps, int(train_s / per_step))
            r, t = timed_run(store, train.TrainConfig(constitution_id=cid, loss="sft", steps=steps), run_dir)
            rows.append((label, steps, t["total_s"] - t["setup_s"], r))
            adapters[label] = run_dir / "adapter"
    print("\nall held-out prompts, fresh teacher samples:")
    full = full_heldout(store, cid, adapters, kl["quantize"], kl["precision"], cfg.sample_tokens)
    base = full["kl"]["base"]
    print(f"  KL(teacher || base) = {base:.4f} nats/token over {full['n_prompts']} prompts")
    for label, steps, seconds, r in rows:
        student = full["kl"][label]
        print(
            f"  {label:16s} {steps:4d} steps {seconds:6.0f} s training: KL(teacher || student) {student:.4f}, "
            f"gap closed {1 - student / base:.3f} "
            f"(run's own held-out figure {r['gap_closed']:.3f}, kept step {r['best_step']})"
        )
    print("\ngreedy answers without the constitution:")
    for i, prompt in enumerate(full["prompts"]):
        print(f"  Q: {prompt}")
        for label in full["answers"]:
            print(f"    {label:16s} {full['answers'][label][i]!r}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; workspace {home}")


if __name__ == "__main__":
    main()
