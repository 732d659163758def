"""What a training run will cost on this machine, for the Distill tab: the precision the policy picks
for the form and why, the run's predicted time (estimate.py) before Start, and the whole run's time
left while it runs.
"""

from __future__ import annotations

from dataclasses import replace

from ctxdistill import estimate, train
from ctxdistill.models import default_models_dir
from ctxdistill.precision import policy
from ctxdistill.ui.common import UNMEASURED, AppContext


def form_values(raw: dict) -> dict:
    """The form's widget values as TrainConfig fields (gradio's numbers arrive as floats)."""
    defaults = train.TrainConfig()
    return {k: (int(v) if type(getattr(defaults, k)) is int and v is not None else v) for k, v in raw.items()}


def precision_text(ctx: AppContext, quantize: str, precision: str) -> str:
    """What the precision policy picks on this machine for the app's model and the form's choices, and why."""
    try:
        chosen = policy(None, quantize or "auto", precision or "auto", ctx.model_params())
    except ValueError as exc:
        return f"**Precision:** {exc}"
    return f"**Precision on this machine:** {chosen.label} — {chosen.reason}."


def estimate_text(ctx: AppContext, values: dict, set_name: str, owner: str, measure: bool) -> str:
    """The run's predicted time from a calibration on this machine (measured when asked, then reused)."""
    try:
        cfg = train.TrainConfig(**form_values(values)).validate()
    except (train.TrainError, TypeError, ValueError) as exc:
        return f"**Time:** {exc}"
    cal = estimate.cached(ctx.model_spec, cfg.quantize, cfg.precision, default_models_dir(ctx.store.home), measure)
    if cal is None:
        return UNMEASURED
    cfg = replace(cfg, prompt_set=(set_name or "").strip() or "default", owner=owner)
    try:
        n_train, n_heldout = estimate.run_size(cfg, ctx.store)
    except train.TrainError as exc:
        return f"**Time:** {exc}"
    sec = estimate.predict_train(cal, cfg, n_train, n_heldout)
    return (
        f"**Time on this machine:** about {estimate.duration(sec['total'])} — "
        + ", ".join(f"{k} {estimate.duration(v)}" for k, v in sec.items() if k != "total")
        + f" ({n_train} train prompts, {cfg.steps} steps; measured with {cal.precision})."
        + estimate.load_note()
    )


def run_eta(ctx: AppContext, job: dict | None) -> str:
    """The whole run's time left beside its phase's ETA, while it runs (estimate.run_left)."""
    if job is None or job["state"] != "running":
        return ""
    try:
        cfg = train.TrainConfig.from_dict(job["config"])
    except (train.TrainError, TypeError, ValueError):
        return ""
    cal = estimate.cached(ctx.model_spec, cfg.quantize, cfg.precision)
    left = estimate.run_left(cfg.steps, job["progress_done"], ctx.store.get_metrics(job["id"]), cal, cfg)
    if left is None:
        return "Whole run: its time left shows once its first training steps are timed."
    if job["progress_done"] == 0:  # before training: the prediction of what follows the current phase
        return f"Whole run: this phase, then about {estimate.duration(left)} of training and measuring."
    return f"Whole run: about {estimate.duration(left)} left."
