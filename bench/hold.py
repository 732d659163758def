"""Make it hold: plain context distillation vs each augmentation (override attempts, conversations,
user instructions, on-policy answers) vs the default, on the embedded SmolLM2-135M, in one run.

    .venv/bin/python bench/hold.py                                   # all four constitutions, every setting
    .venv/bin/python bench/hold.py --only pirate --steps 40 --train-prompts 32 --prompts 32   # a smaller run
    .venv/bin/python bench/hold.py --profile avx2 --configs default  # the default run's time without native bf16

For each constitution (pirate and concise of assets/constitutions; bench/constitutions/weather.yaml,
written for this bench and never tuned on; and bench/constitutions/librarian.yaml, written after the
defaults were set, with no opening word to copy: a form of address, a topic and a thing it never
does) a student is trained per setting, then one ``ctxdistill eval`` with the robustness suite
scores them all on held-out prompts, on the *evaluation* attack set
(ctxdistill/data/attacks.jsonl) and follow-ups only, never the training sets. Printed per student:
training wall time; gap closed (first turn); checks without and under attack for base, teacher and
student, with intervals; KL(un-attacked teacher ‖ attacked x) and the part the attack adds; the
second turn's gap closed; capability and, where the suite has it, benign instructions followed.
The targets of issue 23 are checked at the end of each constitution. ``--equal-time`` also trains a
plain run for as long as the on-policy one took (on-policy vs off-policy at equal wall time);
``--gkd`` trains TRL's GKDTrainer on the plain run's data with the on-policy setting's share as its
lambda, as the baseline for ours (its teacher is the same base model with the constitution spliced
into each row's system turn). ``--runs`` scores finished runs of the ``--keep`` workspace instead of
training any (runs trained by ``ctxdistill train`` there with other seeds or sets, side by side).
``--seeds N`` trains each setting with seeds 0 to N-1 and also prints each setting's mean over its
seeds, with the targets on the mean: one run's capability moves by more than ten points from seed
to seed, far more than the target's two.
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

from cpu_profile import add_profile_flag, apply_profile  # noqa: E402

from ctxdistill import eval_config, evaluate, jobs  # noqa: E402
from ctxdistill.constitution import content_hash, load, to_dict  # noqa: E402
from ctxdistill.database import NotFound  # noqa: E402
from ctxdistill.report import fmt_estimate  # noqa: E402
from ctxdistill.store import Store  # noqa: E402
from ctxdistill.train_config import TrainConfig  # noqa: E402

CONSTITUTIONS = {
    "pirate": REPO / "assets" / "constitutions" / "pirate.yaml",
    "concise": REPO / "assets" / "constitutions" / "concise.yaml",
    "weather": REPO / "bench" / "constitutions" / "weather.yaml",
    "librarian": REPO / "bench" / "constitutions" / "librarian.yaml",
}
# the settings compared: plain distillation, each augmentation alone, all three, the shipped defaults, and the
# defaults with conversations
CONFIGS = {
    "plain": dict(
        attack_share=0.0, multiturn_share=0.0, instruction_share=0.0, on_policy_share=0.0, replay_fraction=0.0
    ),
    "attack": dict(attack_share=0.5, multiturn_share=0.0, on_policy_share=0.0),
    "multiturn": dict(attack_share=0.0, multiturn_share=0.5, on_policy_share=0.0),
    "multiturn1": dict(attack_share=0.0, multiturn_share=1.0, on_policy_share=0.0),
    "instruct": dict(attack_share=0.0, multiturn_share=0.0, instruction_share=0.5, on_policy_share=0.0),
    "attack+instruct": dict(attack_share=0.5, multiturn_share=0.0, instruction_share=0.5, on_policy_share=0.0),
    "onpolicy": dict(attack_share=0.0, multiturn_share=0.0, on_policy_share=0.25),
    "combined": dict(attack_share=0.5, multiturn_share=0.5, on_policy_share=0.25),
    "default": {},
    "default+multiturn": dict(multiturn_share=0.5),
    "default+instruct": dict(instruction_share=0.5),
    "default+constant": dict(schedule="constant"),  # the defaults before the final decay (2026-12-06)
    "default+lr2e-3": dict(lr=2e-3),
    "default+r32": dict(lora_r=32, lora_alpha=64),
    "default+r64": dict(lora_r=64, lora_alpha=128),
    "cosine+multiturn": dict(schedule="cosine", multiturn_share=0.5),  # the defaults before 2026-12-06
    "cosine+multiturn1": dict(schedule="cosine", multiturn_share=1.0),
    "default+t0.7": dict(temperature=0.7),
    "default-replay": dict(replay_fraction=0.0),  # the defaults before the short-answer replay
    "default+full": dict(quantize="none"),  # full weights where the policy picks 4-bit (a CPU with native bf16)
}


def train_run(store: Store, cid: int, settings: dict, steps: int, prompts: int) -> tuple[int, float, dict]:
    """(job id, wall seconds, result) of one training run with these TrainConfig settings; a finished
    run with the same settings in a kept workspace is reused (its wall time from its own record)."""
    cfg = TrainConfig(
        constitution_id=cid,
        **settings,
        **({"steps": steps} if steps else {}),
        **({"max_prompts": prompts} if prompts else {}),
    )
    for old in store.list_jobs(limit=None):
        if (
            old["kind"] == "train"
            and old["state"] == "done"
            and TrainConfig.from_dict(old["config"]) == cfg
            and "trainer" not in (old["result"] or {})
        ):
            print(f"  reusing run {old['id']}", flush=True)
            return finished(old)
    job = store.create_job("train", cfg.to_dict(), heavy=True)
    start = time.perf_counter()
    jobs.run_inline(store, job)
    done = store.get_job(job)
    if done["state"] != "done":
        raise SystemExit(f"training failed: {done['error']}")
    return job, time.perf_counter() - start, done["result"]


def known(store: Store, job: int) -> dict:
    try:
        return store.get_job(job)
    except NotFound:
        raise SystemExit(f"job {job} is not in workspace {store.home}") from None


def finished(job: dict) -> tuple[int, float, dict]:
    """(job id, wall seconds from its own record, result) of a finished training run."""
    if job["kind"] != "train" or job["state"] != "done":
        raise SystemExit(f"job {job['id']} is not a finished training run ({job['kind']}, {job['state']})")
    return job["id"], (job["finished_at"] or 0) - (job["started_at"] or 0), job["result"]


def context_teacher(model, student_prefix: list[int], teacher_prefix: list[int]):
    """The teacher for TRL's GKDTrainer: the base model with the constitution as its system turn. GKD
    gives the teacher the student's own input ids, so each (left-padded) row's default system turn is
    replaced by the constitution's before the forward pass, and the logits are shifted back so that
    position i still predicts the student's token i + 1 (the answer tokens line up; only the prompt's
    positions, which the loss masks, differ)."""
    import torch
    from transformers.modeling_outputs import CausalLMOutput

    class ContextTeacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.config = model, model.config
            self.student, self.teacher = torch.tensor(student_prefix), torch.tensor(teacher_prefix)

        def get_output_embeddings(self):
            return self.model.get_output_embeddings()

        def forward(self, input_ids, attention_mask, **kwargs):
            a, shift = len(self.student), len(self.teacher) - len(self.student)
            ids, mask = [], []
            for row, own in zip(input_ids, attention_mask):
                start = int(own.argmax())
                if not torch.equal(row[start : start + a].cpu(), self.student):
                    raise ValueError("a row does not start with the student's system turn")
                teacher = self.teacher.to(row.device)
                ids.append(torch.cat([row[:start], teacher, row[start + a :]]))
                mask.append(torch.cat([own[:start], torch.ones_like(teacher), own[start + a :]]))
            logits = self.model(input_ids=torch.stack(ids), attention_mask=torch.stack(mask)).logits
            return CausalLMOutput(logits=logits[:, shift:])

    return ContextTeacher()


def gkd_run(store: Store, cid: int, plain: int, share: float) -> tuple[int, float, dict]:
    """TRL's GKDTrainer on the plain run's data (its teacher answers to the same train prompts), with the
    same LoRA shape, steps, batch, learning-rate schedule and precision; lambda = ``share`` (each step
    is the student's own samples with that probability), beta 0 (forward KL, as ours). The adapter is
    saved as a copy of the plain run, so the one evaluation scores it beside ours."""
    import shutil

    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from ctxdistill.constitution import from_row, render
    from ctxdistill.engine import with_end
    from ctxdistill.models import default_models_dir, load_model
    from ctxdistill.sampling import chat_ids, system_prefix
    from ctxdistill.train import _setup_model

    cfg = TrainConfig.from_dict(store.get_job(plain)["config"])
    constitution = from_row(store.get_constitution(cid))
    load = lambda: load_model(quantize=cfg.quantize, precision=cfg.precision, models_dir=default_models_dir(store.home))
    base, tok = load()
    student = _setup_model(cfg, base, cfg.seed)
    teacher = context_teacher(
        load()[0], system_prefix(tok, None), system_prefix(tok, render(constitution), constitution.examples)
    )
    rows = json.loads((store.run_dir(plain) / "data.json").read_text())["train"]
    data = []
    for r, answer in zip(rows, with_end(tok, [r["answer"] for r in rows], cfg.sample_tokens)):
        prompt = chat_ids(tok, r["prompt"])
        data.append(
            {
                "prompt": r["prompt"],
                "input_ids": prompt + answer,
                "completion_mask": [0] * len(prompt) + [1] * len(answer),
            }
        )
    bf16 = str(base.ctxdistill_precision.dtype) == "torch.bfloat16"
    args = GKDConfig(
        output_dir=tempfile.mkdtemp(),
        lmbda=share,
        beta=0.0,
        temperature=cfg.temperature,
        max_new_tokens=cfg.sample_tokens,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=bf16,
        seed=cfg.seed,
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # as ours (and TRL samples without a cache when it is on)
    )
    trainer = GKDTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(data), processing_class=tok
    )
    job = store.create_job("train", cfg.to_dict(), heavy=True)
    started = time.time()
    trainer.train()
    finished = time.time()
    out = Path(tempfile.mkdtemp(prefix="gkd-"))
    student.save_pretrained(out)
    for kept in ("adapter", "best"):  # the plain run's adapter files (same LoRA shape) with GKD's weights
        shutil.copytree(store.run_dir(plain) / kept, store.run_dir(job) / kept)
        shutil.copy(out / "adapter_model.safetensors", store.run_dir(job) / kept / "adapter_model.safetensors")
    result = {"trainer": "trl-gkd", "lmbda": share, "gap_closed": float("nan")}
    store.update_job(job, state="done", started_at=started, finished_at=finished, result=result)
    return job, finished - started, result


def pct(e) -> str:
    return fmt_estimate(e, pct=True) if e else "n/a"


def point(e) -> float:
    return e["value"] if isinstance(e, dict) else float("nan") if e is None else float(e)


def figures(results: dict, job: int) -> dict:
    """One student's figures of the evaluation, as points (fractions; NaN where the suite lacks one)."""
    r = results["robustness"]
    inj, st, cap = r["injection"], r["second_turn"], r["capability"]["accuracy"]
    benign = (r.get("benign") or {}).get("followed")
    label = eval_config.label(job)
    own = inj["overall"][label]
    return {
        "gap": point(results["scores"]["gap_closed"][label]),
        "drop": point(own["clean"]) - point(own["attacked"]),
        "share": point(inj.get("kl_added_share", {}).get(label)),
        "second_shared": point(st["gap_closed_shared"][label]),
        "second_own": point(st["gap_closed"][label]),
        "capability": point(cap[label]),
        "benign": point(benign[label]) if benign else float("nan"),
    }


def verdicts(f: dict, teacher: dict, plain_gap: float | None) -> str:
    """Issue 23's targets for one student's figures (or a setting's mean over seeds)."""
    verdict = lambda ok: "met" if ok else "not met"
    return (
        f"drop {100 * f['drop']:.0f} pts <= a third of what the teacher loses ({100 * teacher['drop']:.0f}; "
        f"none where it gains): {verdict(f['drop'] <= max(teacher['drop'], 0) / 3 + 1e-9)}; "
        f"attack adds <= half the teacher's KL under attack: "
        f"{verdict(f['share'] <= 0.5)}; second turn >= 0.7 (teacher's / own conversation): "
        f"{verdict(f['second_shared'] >= 0.7)} / {verdict(f['second_own'] >= 0.7)}; "
        f"capability within 2 pts of the teacher: {verdict(f['capability'] >= teacher['capability'] - 0.02)}"
        + (
            f"; benign >= teacher - 5 pts: {verdict(f['benign'] >= teacher['benign'] - 0.05)}"
            if f["benign"] == f["benign"]
            else ""
        )
        + (
            f"; first turn within 0.02 of plain: {verdict(f['gap'] >= plain_gap - 0.02)}"
            if plain_gap is not None
            else ""
        )
    )


def report(results: dict, runs: dict[str, tuple[int, float, dict]], setting_of: dict[str, str]) -> None:
    """Each student's figures and targets; where a setting ran with several seeds (``setting_of`` maps
    a run's name to its setting; a run it lacks is a setting of its own), also their mean over the
    seeds, each seed's figure beside it, and the targets on the mean."""
    r = results["robustness"]
    inj, st, cap = r["injection"], r["second_turn"], r["capability"]["accuracy"]
    benign = (r.get("benign") or {}).get("followed")
    teacher = inj["overall"]["teacher"]
    mine = {
        "drop": point(teacher["clean"]) - point(teacher["attacked"]),
        "capability": point(cap["teacher"]),
        "benign": point(benign["teacher"]) if benign else float("nan"),
    }
    print(
        f"  base: checks {pct(st['checks']['base']['first'])} (suite prompts); teacher: checks without / under "
        f"attack {pct(teacher['clean'])} / {pct(teacher['attacked'])}, KL(teacher‖attacked teacher) "
        f"{fmt_estimate(teacher['kl'])}; capability teacher {pct(cap['teacher'])}, base {pct(cap['base'])}"
        + (f"; benign followed teacher {pct(benign['teacher'])}, base {pct(benign['base'])}" if benign else "")
    )
    plain = [
        figures(results, job)["gap"] for name, (job, _, _) in runs.items() if setting_of.get(name, name) == "plain"
    ]
    plain_gap = sum(plain) / len(plain) if plain else None
    by_setting: dict[str, list[dict]] = {}
    for setting, (job, wall, result) in runs.items():
        label = eval_config.label(job)
        own = inj["overall"][label]
        clean_kl = inj.get("kl_clean", {}).get(label)
        added = inj.get("kl_added", {}).get(label)
        f = figures(results, job)
        by_setting.setdefault(setting_of.get(setting, setting), []).append(f)
        print(
            f"  {setting:10s} run {job}: trained {wall:.0f} s, gap closed {pct(results['scores']['gap_closed'][label])}"
            f" (in-run {result.get('gap_closed', float('nan')):.3f}); checks without / under attack "
            f"{pct(own['clean'])} / {pct(own['attacked'])}; KL(teacher‖student) un-attacked "
            f"{fmt_estimate(clean_kl) if clean_kl else 'n/a'}, attacked {fmt_estimate(own['kl'])}, added by the attack "
            f"{fmt_estimate(added) if added else 'n/a'} nats/token = {pct(inj.get('kl_added_share', {}).get(label))} "
            f"of the teacher's own; second turn gap closed {pct(st['gap_closed_shared'][label])} in the teacher's "
            f"conversation, {pct(st['gap_closed'][label])} in its own; capability {pct(cap[label])}"
            + (f"; benign followed {pct(benign[label])}" if benign else "")
        )
        print(f"  {'':10s} targets: {verdicts(f, mine, plain_gap)}")
    for setting, seeds in by_setting.items():
        if len(seeds) < 2:
            continue
        mean = {k: sum(f[k] for f in seeds) / len(seeds) for k in seeds[0]}
        spread = lambda k, unit="%": f"{100 * mean[k]:.1f} {unit} ({', '.join(f'{100 * f[k]:.0f}' for f in seeds)})"
        print(
            f"  {setting}, mean of {len(seeds)} seeds (each seed's in brackets): gap closed {spread('gap')}; "
            f"checks drop under attack {spread('drop', 'points')}; "
            f"KL the attack adds {spread('share')} of the teacher's; "
            f"second turn {spread('second_shared')} in the teacher's conversation; capability "
            f"{spread('capability')}" + (f"; benign followed {spread('benign')}" if benign else "")
        )
        print(f"  {'':10s} targets on the mean: {verdicts(mean, mine, plain_gap)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", default=list(CONSTITUTIONS), choices=list(CONSTITUTIONS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--keep", help="keep the workspace here")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts scored (default 64)")
    p.add_argument("--steps", type=int, default=0, help="training steps (0 = the default)")
    p.add_argument("--train-prompts", type=int, default=0, help="train prompts (0 = all)")
    p.add_argument("--suite-prompts", type=int, default=16, help="prompts of the second turn and attacks")
    p.add_argument("--attack-prompts", type=int, default=6, help="prompts per kind of attack (default 6)")
    p.add_argument("--capability-items", type=int, default=0, help="capability items (0 = all)")
    p.add_argument("--equal-time", action="store_true", help="also a plain run as long as the on-policy one")
    p.add_argument("--gkd", action="store_true", help="also TRL's GKDTrainer on the plain run's data (needs plain)")
    p.add_argument("--runs", nargs="+", type=int, help="score these finished runs of the --keep workspace, train none")
    p.add_argument("--seeds", type=int, default=1, help="train each setting with seeds 0..N-1 and print their mean")
    add_profile_flag(p)
    args = p.parse_args()
    if args.runs and not (args.keep and len(args.only) == 1):
        p.error("--runs scores runs of one constitution in a kept workspace: give --keep and one --only")
    if args.seeds < 1 or (args.seeds > 1 and (args.runs or args.equal_time or args.gkd)):
        p.error("--seeds takes a whole number from 1, and not with --runs, --equal-time or --gkd")
    apply_profile(args)
    home = Path(args.keep or tempfile.mkdtemp(prefix="ctxdistill-hold-"))
    store = Store(home)
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared); workspace {home}")
    defaults = TrainConfig()
    print(
        f"defaults: attack share {defaults.attack_share}, multi-turn share {defaults.multiturn_share}, "
        f"on-policy share {defaults.on_policy_share}, replay {defaults.replay_fraction} of {defaults.replay_set}"
    )
    for name in args.only:
        c = load(CONSTITUTIONS[name])
        cid = store.save_constitution(c.name, to_dict(c), content_hash(c))
        print(f"\n{name} (constitution v{cid})", flush=True)
        runs = {f"run {job}": finished(known(store, job)) for job in args.runs or []}
        setting_of = {run: run for run in runs}
        for setting in [] if args.runs else args.configs:
            for seed in range(args.seeds):
                run = f"{setting} s{seed}" if args.seeds > 1 else setting
                runs[run] = train_run(store, cid, {**CONFIGS[setting], "seed": seed}, args.steps, args.train_prompts)
                setting_of[run] = setting
                print(f"  {run}: trained in {runs[run][1]:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        if args.equal_time and "onpolicy" in runs and "plain" in runs:
            ratio = runs["onpolicy"][1] / runs["plain"][1]
            steps = round((args.steps or defaults.steps) * ratio)
            runs["plain@equal time"] = train_run(store, cid, CONFIGS["plain"], steps, args.train_prompts)
            print(f"  plain, {steps} steps: trained in {runs['plain@equal time'][1]:.0f} s", flush=True)
        if args.gkd and "plain" in runs:
            runs["TRL GKD"] = gkd_run(store, cid, runs["plain"][0], CONFIGS["onpolicy"]["on_policy_share"])
            print(f"  TRL GKD: trained in {runs['TRL GKD'][1]:.0f} s", flush=True)
        cfg = eval_config.EvalConfig(
            constitution_id=cid,
            runs=[job for job, _, _ in runs.values()],
            max_prompts=args.prompts,
            suite_prompts=args.suite_prompts,
            attack_prompts=args.attack_prompts,
            capability_items=args.capability_items,
        )
        start = time.perf_counter()
        results = evaluate.run(cfg, store)
        (home / f"results-{name}.json").write_text(json.dumps({"results": results, "runs": runs}, default=str))
        print(
            f"  evaluated in {time.perf_counter() - start:.0f} s: {results['n_prompts']} held-out prompts, "
            f"{results['robustness']['injection']['n_attacks']} attacked prompts (evaluation set), "
            f"{results['robustness']['second_turn']['n']} second turns; {results['precision']} / {results['quantize']}"
        )
        report(results, runs, setting_of)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
