"""How long a job will take on this machine, before it starts: a short calibration, then arithmetic.

    ctxdistill info            # prints the calibration and the default run's predicted time

``calibrate`` times the three kinds of work a job is made of, on the model as the job would load
it (the precision policy's choice): one training step (student forward and backward of a batch
of answers), one scoring pass (the held-out KL's forward), and one sampling step of a batch of
rows (a decode step with the key/value cache). ``predict_train`` and ``predict_sampling`` turn a
job's settings into seconds from those; ``info_text`` is what ``ctxdistill info`` prints. Timings
of the CPU differ by 6x between machines that look alike (native bf16 or not), which is why
nothing here is a constant measured elsewhere.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import torch

CAL_BATCH = 8  # answers per calibrated training step (the default batch size)
CAL_ANSWER = 40  # tokens per calibrated answer (the default sample length)
CAL_ROWS = 64  # rows per calibrated sampling batch (what a run's teacher sampling uses)
CAL_DECODE = 6  # decode steps timed
EVAL_BATCH = 16  # answers per held-out scoring pass (engine.heldout_kl)


@dataclass
class Calibration:
    """Seconds per unit of work, measured on this machine with ``precision``."""

    precision: str  # Precision.label
    load_s: float  # loading the model
    step_s: float  # one training step of CAL_BATCH answers of CAL_ANSWER tokens
    score_s: float  # one scoring pass of EVAL_BATCH answers
    decode_s: float  # one sampling step of CAL_ROWS rows
    prefill_s: float  # encoding the prompts of CAL_ROWS rows

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    spec: str | None = None, *, quantize: str = "auto", precision: str = "auto", models_dir=None
) -> Calibration:
    """Measure the units of ``Calibration`` (the model's load, then a few seconds), on the model loaded
    as a training run would load it (its own copy: the adapter it adds for the step is thrown away with it)."""
    from .engine import Example, TeacherStudent
    from .models import load_model
    from .sampling import SamplingConfig, generate_rows
    from .train import TrainConfig, _setup_model, backward_batch

    t0 = time.perf_counter()
    model, tokenizer = load_model(spec, quantize=quantize, precision=precision, models_dir=models_dir)
    load_s = time.perf_counter() - t0
    chosen = model.ctxdistill_precision
    cfg = TrainConfig()
    student = _setup_model(cfg, model, seed=0)
    pair = TeacherStudent(student, tokenizer, "You are a helpful assistant. Answer briefly.")
    g = torch.Generator().manual_seed(0)
    vocab = min(int(tokenizer.vocab_size), 30_000)

    def answers(n):
        return [
            Example(
                f"question {i}: how does this work?", torch.randint(100, vocab, (CAL_ANSWER,), generator=g).tolist()
            )
            for i in range(n)
        ]

    batch = answers(CAL_BATCH)
    step_s = _best(lambda: backward_batch(pair, cfg, batch, 1.0 / (CAL_BATCH * CAL_ANSWER)))
    student.zero_grad(set_to_none=True)
    student.eval()
    scored = answers(EVAL_BATCH)
    with torch.no_grad():
        score_s = _best(lambda: pair.hidden(scored, with_teacher=False))
    rows = [(pair.system, f"question {i}: how does this work?") for i in range(CAL_ROWS)]
    marks = []
    sampling = SamplingConfig(max_new_tokens=CAL_DECODE + 1, temperature=1.0)
    with pair.teacher_mode(), torch.no_grad():
        start = time.perf_counter()
        generate_rows(student, tokenizer, rows, sampling, on_token=lambda step, new: marks.append(time.perf_counter()))
    decode_s = (marks[-1] - marks[0]) / max(1, len(marks) - 1) if len(marks) > 1 else marks[0] - start
    prefill_s = max(0.0, (marks[0] - start) - decode_s) if marks else 0.0
    return Calibration(chosen.label, load_s, step_s, score_s, decode_s, prefill_s)


_measured: dict[tuple, Calibration] = {}


def cached(
    spec: str | None, quantize: str, precision: str, models_dir=None, measure: bool = False
) -> Calibration | None:
    """This process's calibration for (model, quantize, precision): measured once when ``measure``,
    then reused by every form that predicts a time; None while it has not been measured."""
    key = (spec, quantize, precision)
    if key not in _measured and measure:
        _measured[key] = calibrate(spec, quantize=quantize, precision=precision, models_dir=models_dir)
    return _measured.get(key)


def _best(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs after a warm-up: the machine's speed, not its noise."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def predict_sampling(cal: Calibration, rows: int, tokens: int) -> float:
    """Seconds to sample ``tokens`` tokens for each of ``rows`` rows. A decode step's cost is taken
    as proportional to its rows (measured at CAL_ROWS, what a run's teacher sampling batches); on
    the CPU it grows less than that, so small batches come out on the long side."""
    per_row_step = cal.decode_s / CAL_ROWS
    per_row_prefill = cal.prefill_s / CAL_ROWS
    return rows * (tokens * per_row_step + per_row_prefill)


def run_size(cfg, store) -> tuple[int, int]:
    """(prompts the teacher answers for training, held-out prompts) of a training run with ``cfg``
    (a TrainConfig), picked as the run picks them (``mix``: held-out categories, replay prompts; the
    shipped set is added first if missing). Raises TrainError where the run itself would."""
    from .mix import replay_prompts, split_prompts
    from .prompts import ensure_default_prompts

    ensure_default_prompts(store, cfg.owner)
    train, heldout = split_prompts(store, cfg)
    return len(train) + len(replay_prompts(store, cfg, len(train))), len(heldout)


def predict_train(cal: Calibration, cfg, n_train: int, n_heldout: int) -> dict:
    """Seconds for each phase of a training run with ``cfg`` (a TrainConfig) on ``n_train`` train
    prompts (or answers, for curated data) and ``n_heldout`` held-out prompts (``run_size``)."""
    from .hold import SECOND_TURN_PROBES

    answer_scale = cfg.sample_tokens / CAL_ANSWER
    sampled = n_train * cfg.samples_per_prompt if cfg.data == "prompts" else 0
    heldout = min(n_heldout, cfg.eval_prompts) if cfg.eval_prompts else n_heldout
    # make it hold (hold.py): the teacher's answers to follow-ups (and to held-out ones, for the second-turn
    # probe) and to instructed prompts, once each; the attacked probes add one held-out pass per measurement
    extra = 0
    if cfg.data == "prompts":
        extra += round(cfg.multiturn_share * n_train) + round(cfg.instruction_share * n_train)
        extra += min(heldout, SECOND_TURN_PROBES) if cfg.multiturn_share else 0
    sampling = predict_sampling(cal, sampled + heldout + extra, cfg.sample_tokens)
    rows = cfg.batch_size * cfg.grad_accum
    step = cal.step_s * (cfg.batch_size / CAL_BATCH) * answer_scale * cfg.grad_accum
    # a share of the micro-batches is answered by the student at its step: the expected rows per step
    step += predict_sampling(cal, round(cfg.on_policy_share * rows), cfg.sample_tokens)
    evals = 2 + (cfg.steps - 1) // cfg.eval_every if cfg.eval_every else 2
    probed = heldout * (1 + bool(cfg.attack_share)) + (min(heldout, SECOND_TURN_PROBES) if cfg.multiturn_share else 0)
    scoring = evals * math.ceil(probed / EVAL_BATCH) * cal.score_s * answer_scale
    phases = {"load": cal.load_s, "sampling": sampling, "training": cfg.steps * step, "held-out": scoring}
    if cfg.from_run:  # a re-bake first scores every answer under the earlier run's student
        phases["ranking"] = math.ceil(sampled / EVAL_BATCH) * cal.score_s * answer_scale
    return {**phases, "total": sum(phases.values())}


def default_run(store, cal: Calibration) -> dict:
    """Predicted seconds per phase of ``ctxdistill train`` with its defaults on the shipped prompt set."""
    from .train_config import TrainConfig

    cfg = TrainConfig()
    n_train, n_heldout = run_size(cfg, store)
    return {
        "steps": cfg.steps,
        "n_train": n_train,
        "n_heldout": n_heldout,
        "seconds": predict_train(cal, cfg, n_train, n_heldout),
    }


def run_left(steps: int, done: int, metrics: list[dict], cal: Calibration | None = None, cfg=None) -> float | None:
    """Seconds a training run still needs, for the whole run's ETA: from the times its steps were
    logged (``metrics``: store.get_metrics rows), so the machine's load as the run sees it counts,
    held-out measurements included; before two steps were logged, the prediction of its training
    and held-out phases from this process's calibration (``cal`` with its TrainConfig ``cfg``), or
    None where there is neither."""
    logged = sorted((m["step"], m["at"]) for m in metrics if m["name"] == "loss")
    if len(logged) >= 2 and logged[-1][0] > logged[0][0]:
        per_step = (logged[-1][1] - logged[0][1]) / (logged[-1][0] - logged[0][0])  # evaluations included
        gaps = sorted(b[1] - a[1] for a, b in zip(logged, logged[1:]) if b[0] == a[0] + 1)
        # the final held-out measurement: as long as the longest step less a plain one (a step that measured)
        final = gaps[-1] - gaps[len(gaps) // 2] if len(gaps) >= 3 else 0.0
        return max(0, steps - done) * per_step + final
    if cal is None or cfg is None:
        return None
    phases = predict_train(cal, cfg, 0, cfg.eval_prompts or 0)
    return phases["training"] + phases["held-out"]


def predict_eval(cal: Calibration, units: int, tokens: int) -> float:
    """Seconds of an evaluation of ``units`` progress units (evaluate.units: answers sampled, then
    scored) of up to ``tokens`` tokens each. A unit is costed as a sampled answer, the dearer of the
    two (a scoring pass is one forward of a batch, a sampled answer one per token)."""
    return predict_sampling(cal, units, tokens)


def busy() -> tuple[float, int] | None:
    """(load, cores) when the last minute's load average is above the machine's cores, else None:
    jobs then get a share of the CPU that nothing here can predict (they run at a low priority)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        return None
    cores = os.cpu_count() or 1
    return (load, cores) if load > cores else None


def load_note() -> str:
    """What a predicted time adds on a busy machine (``busy``): that it cannot say how much longer."""
    load = busy()
    if load is None:
        return ""
    return (
        f" The machine is busy (load {load[0]:.1f} on {load[1]} cores): the job gets what the other programs "
        "leave, so it can take several times longer, and how much longer cannot be said in advance; the job's "
        "progress shows its measured ETA."
    )


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 3 min 20 s, 1 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def info_text(out: dict) -> str:
    """What ``ctxdistill info`` prints: ``precision.facts()``, with the calibration and ``default_run``
    when measured."""
    v = out["versions"]
    lines = [
        f"device        {out['device']}" + (f" · {out['gpu']} ({out['gpu_memory_mb']} MB)" if out["gpu"] else ""),
        f"CPU           {out['cpu_model']} · {out['cores']} cores, {out['torch_threads']} torch threads",
        f"CPU ISA       ATen {out['cpu_capability']}"
        + (f" · oneDNN max {out['onednn_max_isa']}" if out["onednn_max_isa"] else "")
        + f" · bf16 flags: {', '.join(out['cpu_bf16_flags']) or 'none'}"
        + f" · native bf16: {'yes' if out['native_bf16'] else 'no'}",
        "versions      " + ", ".join(f"{k} {v[k] or '-'}" for k in v),
        f"precision     {out['precision']['label']}: {out['precision']['reason']}",
    ]
    if "calibration" in out:
        c, run = out["calibration"], out["default_run"]
        sec = run["seconds"]
        lines += [
            f"measured      training step (8 answers x 40 tokens) {c['step_s']:.2f} s"
            f" · scoring pass {c['score_s']:.2f} s"
            f" · sampling step (64 rows) {c['decode_s'] * 1000:.0f} ms · model load {c['load_s']:.1f} s",
            f"default run   ~{duration(sec['total'])} ({run['steps']} steps on {run['n_train']} train prompts): "
            + ", ".join(f"{k} {duration(v)}" for k, v in sec.items() if k != "total"),
        ]
    return "\n".join(lines)
