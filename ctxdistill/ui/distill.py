"""The Distill tab: start a training job, watch it (progress, loss and held-out KL plots, log tail),
stop or resume it, list past runs and export a run's adapter.

The job runs in a worker process; this tab only reads the store, on a timer, so a reload or a
dropped connection re-attaches to whatever is running.
"""

from __future__ import annotations

import functools
import html
import shutil
from dataclasses import fields
from pathlib import Path

import gradio as gr
import pandas as pd

from ctxdistill import adapters, estimate, jobs, mix, train, train_config
from ctxdistill.models import default_models_dir
from ctxdistill.plots import fig_curves, metric_frame
from ctxdistill.precision import PRECISIONS, QUANTIZE
from ctxdistill.precision import facts as precision_facts
from ctxdistill.safety import safe_path
from ctxdistill.ui import curated
from ctxdistill.ui import stale as stale_notice
from ctxdistill.ui.common import (
    MODEL_QUEUE,
    AppContext,
    adapter_dir,
    bind,
    download_dir,
    drawn_key,
    error_text,
    job_status_html,
    keep,
    on_stop,
    train_runs,
    version_menu,
    wire_job_buttons,
)
from ctxdistill.ui.forecast import estimate_text, form_values, precision_text, run_eta

# the form: TrainConfig fields shown as widgets, in this order
BASIC = (
    "data",
    "loss",
    "alpha",
    "steps",
    "batch_size",
    "lr",
    "lora_r",
    "sample_tokens",
    "max_prompts",
    "quantize",
    "precision",
    "eval_every",
    "checkpoint_every",
    "grad_accum",
    "warmup_steps",
    "schedule",
    "lora_alpha",
    "lora_dropout",
    "seed",
)
# re-bake from an earlier run, category hold-out, general replay and the capability gauge
MIXING = (
    "from_run",
    "rebake_share",
    "rebake_replay",
    "heldout_categories",
    "replay_set",
    "replay_fraction",
    "capability_gauge",
    "baked_gauge",
)
# make it hold (hold.py): override attempts, conversations, user instructions and on-policy answers in training
HOLD = train_config.HOLD_FIELDS
HOLD_SHARES = {  # each step's share of its answers; plotted as the share of the answers trained so far
    "share_attacked": "answers attacked so far",
    "share_second_turn": "answers to follow-ups so far",
    "share_on_policy": "student's own answers so far",
}
HOLD_KL = {"heldout_kl_attacked": "held-out KL under attack", "heldout_kl_second_turn": "held-out KL, second turn"}
FORM = BASIC + MIXING + HOLD
CHOICES = {
    "data": train_config.DATA_SOURCES,
    "loss": train_config.LOSSES,
    "schedule": train_config.SCHEDULES,
    "quantize": QUANTIZE,
    "precision": PRECISIONS,
}
LABELS = {
    "from_run": "Continue from run (0 = a fresh adapter)",
    "attack_set": "Attack set (a JSON lines file; empty = the shipped training set)",
    "followup_set": "Follow-up set (a JSON lines file; empty = the shipped training set)",
    "instruction_set": "Instruction set (a JSON lines file; empty = the shipped training set)",
}
RUN_COLUMNS = [
    "job",
    "state",
    "constitution",
    "loss",
    "data",
    "steps",
    "precision",
    "held-out KL before",
    "after",
    "gap closed",
    "lineage",
]
GAUGE = {"capability": "capability (student)", "capability_teacher": "capability (teacher)"}  # and "baked:<principle>"
CURVES = {"loss": "loss", "kl": "KL(teacher‖student)", "heldout_kl": "held-out KL"}


def _help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(train.TrainConfig) if f.name == name)


def _elem_id(name: str) -> str:
    return f"train-{name.replace('_', '-')}"


def by_name(values: dict) -> dict:
    """A set of inputs arrives as one {component: value} dict: its values by field name (from the elem_id)."""
    return {c.elem_id.removeprefix("train-").replace("-", "_"): v for c, v in values.items()}


def _widget(name: str, default, cap: int | None = None):
    label = LABELS.get(name, name.replace("_", " ").capitalize())
    kw = dict(label=label, info=_help(name), elem_id=_elem_id(name))
    if name in CHOICES:
        return gr.Radio(list(CHOICES[name]), value=default, **kw)
    if isinstance(default, str):
        return gr.Textbox(value=default, **kw)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **kw)
    if isinstance(default, int):  # the field stops where TrainConfig.validate would refuse (or at the demo's cap)
        most = min((x for x in (cap, train_config.TRAIN_MAXIMA.get(name)) if x is not None), default=None)
        return gr.Number(
            value=default if cap is None else min(default, cap), precision=0, minimum=0, maximum=most, **kw
        )
    return gr.Number(value=default, **kw)


def runs_table(ctx: AppContext, owner: str) -> pd.DataFrame:
    rows = []
    for job in train_runs(ctx, owner):
        cfg, result = job["config"], job["result"] or {}
        fmt = lambda key: round(result[key], 4) if isinstance(result.get(key), float) else None
        rows.append(
            [
                job["id"],
                job["state"],
                f"v{cfg.get('constitution_id')}",
                cfg.get("loss"),
                cfg.get("data"),
                f"{job['progress_done']}/{cfg.get('steps')}",
                f"{result['quantize']}, {result['precision']}"
                if "precision" in result
                else cfg.get("precision", "auto"),
                fmt("heldout_kl_before"),
                fmt("heldout_kl_after"),
                fmt("gap_closed"),
                f"from run {cfg['from_run']}" if cfg.get("from_run") else "",
            ]
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def metrics_frames(ctx: AppContext, job_id: int | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(training loss, held-out KLs, shares in 0..1) by step, for the plots: KLs and shares on axes of
    their own. The loss's KL term shows where it differs from the loss (--loss mix); the shares are the
    gauges (capability, baked shares) and the augmented shares of the answers trained so far, each
    augmentation the run uses."""
    rows = ctx.store.get_metrics(int(job_id)) if job_id else []
    baked = {r["name"]: r["name"].replace("baked:", "baked share: ") for r in rows if r["name"].startswith("baked:")}
    labels = {**CURVES, **GAUGE, **HOLD_SHARES, **HOLD_KL, **baked}
    loss_at = {r["step"]: r["value"] for r in rows if r["name"] == "loss"}
    own_kl = any(r["name"] == "kl" and r["value"] != loss_at.get(r["step"]) for r in rows)
    shares = metric_frame(rows, {n for n in HOLD_SHARES if any(r["name"] == n and r["value"] for r in rows)}, labels)
    shares["value"] = shares.sort_values("step").groupby("metric")["value"].transform(lambda v: v.expanding().mean())
    return (
        metric_frame(rows, {"loss", *(["kl"] if own_kl else [])}, labels),
        metric_frame(rows, {"heldout_kl", *HOLD_KL}, labels),
        pd.concat([metric_frame(rows, {*GAUGE, *baked}, labels), shares], ignore_index=True),
    )


PLOTS = (  # (title, y range) of the loss, held-out KL and shares plots
    ("Training loss (nats/token)", None),
    ("Held-out KL(teacher‖student), nats/token", None),
    ("Shares (0–1): capability, baked, augmented answers", (0, 1.05)),
)


def plot_updates(frames: tuple) -> tuple:
    """The plots' figures (matplotlib: drawn server-side, so a plot shows every point it was sent);
    the gauges' plot shows only for a run that measures them (its legend names only what it tracks)."""
    loss, heldout, gauges = (fig_curves((f, *plot)) for f, plot in zip(frames, PLOTS))
    return loss, heldout, gr.update(value=gauges, visible=gauges is not None)


def status_html(job: dict | None, eta: str = "") -> str:
    result = (job or {}).get("result") or {}
    notes = [eta] if eta else []
    if "heldout_kl_after" in result:
        notes.append(
            f"held-out KL {result['heldout_kl_before']:.4f} → {result['heldout_kl_after']:.4f} nats/token · "
            f"gap closed {result['gap_closed']:.0%} (kept step {result['best_step']})"
        )
    if result.get("lineage"):
        notes.append(html.escape(result["lineage"]["text"]))
    steps = int(job["config"].get("steps", 1)) if job else 1
    counter = f"step {job['progress_done']}/{job['progress_total'] or steps}" if job else ""
    empty = "No run yet: pick a constitution version and press Start."
    return job_status_html(job, "train-status-text", empty, counter, tuple(notes), total=steps)


def log_tail(ctx: AppContext, job_id: int | None, lines: int = 15) -> str:
    if not job_id:
        return ""
    path = safe_path(ctx.store.runs_dir, f"{int(job_id)}/log.txt")
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name; "widgets" are the form's TrainConfig fields, in FORM's order."""
    gr.Markdown(
        "Train a LoRA adapter so that the model **without** the constitution answers as it does **with** it. "
        "The defaults train the embedded model on the CPU in a few minutes. The held-out KL is the "
        "distance between teacher and student on prompts the run never trains on; the run keeps its best step."
    )
    defaults = train.TrainConfig()
    caps = ctx.caps
    # demo caps bound the form itself (gradio refuses a number above its maximum) and on_start
    form_caps = (
        {
            "steps": caps.steps,
            "max_prompts": caps.prompts,
            "sample_tokens": caps.max_new_tokens,
            "batch_size": caps.batch_size,
            "grad_accum": caps.grad_accum,
            "lora_r": caps.lora_r,
        }
        if caps
        else {}
    )
    with gr.Row():
        version, picked = version_menu(ctx, _elem_id("version"), scale=2)
        prompt_set = gr.Textbox(label="Prompt set", value=defaults.prompt_set, elem_id=_elem_id("prompt_set"), scale=1)
    offer = curated.layout()
    widgets = {}
    with gr.Row():
        for name in FORM[:4]:
            widgets[name] = _widget(name, getattr(defaults, name), form_caps.get(name))
    with gr.Row():
        for name in FORM[4:10]:
            widgets[name] = _widget(name, getattr(defaults, name), form_caps.get(name))
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            for name in BASIC[10:]:
                widgets[name] = _widget(name, getattr(defaults, name), form_caps.get(name))
    with gr.Accordion("Re-bake, hold out categories, replay", open=False) as mixing:
        for row in (MIXING[:3], MIXING[3:]):
            with gr.Row():
                for name in row:
                    widgets[name] = _widget(name, getattr(defaults, name), form_caps.get(name))
    with gr.Accordion(
        "Make it hold: override attempts, conversations, user instructions, the student's own answers", open=False
    ):
        gr.Markdown(
            "Baked behaviour that is not talked out of the model and does not fade in a conversation: the "
            "student also trains on prompts wrapped in override attempts (towards the teacher's answer to "
            "the clean prompt), on the teacher's answers to follow-up messages and to prompts that carry a "
            "benign instruction of the user's, and along its own answers."
        )
        with gr.Row():
            for name in HOLD:
                if name.endswith("_share"):
                    label = name.replace("_", " ").capitalize()
                    kw = dict(label=label, info=_help(name), elem_id=_elem_id(name))
                    widgets[name] = gr.Slider(0, 1, value=getattr(defaults, name), step=0.05, **kw)
                else:
                    widgets[name] = _widget(name, getattr(defaults, name))
    # the precision the policy picks for the form and why, the run's predicted time, and this
    # machine's facts (what `ctxdistill info` prints)
    with gr.Row():
        chosen = gr.Markdown(precision_text(ctx, "auto", "auto"), elem_id="train-precision")
        guess = gr.Markdown(elem_id="train-estimate")
        measure = gr.Button("Estimate the time", size="sm", elem_id="train-estimate-button", scale=0)
    with gr.Accordion("This machine", open=False):
        facts = gr.JSON(elem_id="train-machine")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="secondary", interactive=False, elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    run = gr.Dropdown(label="Run", choices=[], elem_id="train-run")
    stale = stale_notice.layout("train")
    status = gr.HTML(status_html(None), elem_id="train-status")
    with gr.Row():
        loss_plot = gr.Plot(label="Training loss", show_label=False, elem_id="train-loss-plot")
        heldout_plot = gr.Plot(label="Held-out KL", show_label=False, elem_id="train-heldout-plot")
        gauge_plot = gr.Plot(
            label="Capability and baked shares", show_label=False, elem_id="train-gauge-plot", visible=False
        )
    log = gr.Textbox(label="Log", lines=6, max_lines=15, interactive=False, elem_id="train-log")
    runs = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, label="Runs", elem_id="train-runs")
    with gr.Accordion("Export the run's adapter", open=False):
        with gr.Row():
            merged = gr.Checkbox(
                label="Merged 16-bit model instead of the adapter", value=False, elem_id="export-merged"
            )
            strength = gr.Slider(
                *adapters.STRENGTH_RANGE,
                value=1.0,
                step=0.05,
                label="Strength (0 = base model, 1 = as trained)",
                elem_id="export-strength",
            )
            export = gr.Button("Export", elem_id="train-export")
            # a Space's HF_TOKEN is its owner's: no visitor pushes with it
            hub_id = gr.Textbox(label="Hub repository (owner/name)", elem_id="train-hub-id", visible=not ctx.demo)
            push = gr.Button("Push to the Hub (needs HF_TOKEN)", elem_id="train-push", visible=not ctx.demo)
        files = gr.File(label="Download", elem_id="train-export-file")
        export_msg = gr.Markdown(elem_id="train-export-msg")
    plotted = gr.State(None)  # (job, step, state) the plots show: unchanged plots are not sent again
    return dict(
        version=version,
        picked=picked,
        prompt_set=prompt_set,
        widgets=widgets,
        mixing=mixing,
        chosen=chosen,
        guess=guess,
        measure=measure,
        facts=facts,
        start=start,
        stop=stop,
        resume=resume,
        run=run,
        **stale,
        **offer,
        status=status,
        loss_plot=loss_plot,
        heldout_plot=heldout_plot,
        gauge_plot=gauge_plot,
        log=log,
        runs=runs,
        merged=merged,
        strength=strength,
        export=export,
        hub_id=hub_id,
        push=push,
        files=files,
        export_msg=export_msg,
        plotted=plotted,
    )


def on_choice(ctx: AppContext, quantize, precision):
    return precision_text(ctx, quantize, precision)


def on_measure(ctx: AppContext, values: dict, request: gr.Request):
    form = by_name(values)
    text = estimate_text(ctx, form, form.pop("prompt_set"), ctx.owner(request), measure=True)
    return text, precision_facts(ctx.model_params())


def on_form(ctx: AppContext, values: dict, request: gr.Request):
    form = by_name(values)
    return estimate_text(ctx, form, form.pop("prompt_set"), ctx.owner(request), measure=False)


def run_choices(ctx: AppContext, owner: str, selected=None):
    return keep(
        [(f"job {j['id']} · {j['state']} · {j['config'].get('loss')}", j["id"]) for j in train_runs(ctx, owner)],
        selected,
    )


def run_list(ctx: AppContext, current, request: gr.Request):
    return run_choices(ctx, ctx.owner(request), current)


def poll(ctx: AppContext, job_id, shown, request: gr.Request):
    """The run's status, plots (when its step or state moved), log tail and the runs table."""
    owner = ctx.owner(request)
    job = ctx.find_job(job_id, request)
    run_id = job["id"] if job else None
    key = drawn_key(job)
    plots = plot_updates(metrics_frames(ctx, run_id)) if key != shown else (gr.skip(),) * 3
    return status_html(job, run_eta(ctx, job)), *plots, log_tail(ctx, run_id), runs_table(ctx, owner), key


def settings_of(ctx: AppContext, job_id, request: gr.Request):
    """A picked run's own settings in the form, so that what it ran is what one reads (and resumes)."""
    job = ctx.find_job(job_id, request)
    if job is None:
        return (gr.skip(),) * (3 + len(FORM))
    cfg, defaults = job["config"], train.TrainConfig()
    return (
        gr.update(value=cfg.get("constitution_id")),
        True,  # the run's version is the visitor's pick now
        cfg.get("prompt_set", defaults.prompt_set),
        *[cfg.get(name, getattr(defaults, name)) for name in FORM],
    )


def on_start(ctx: AppContext, values: dict, request: gr.Request):
    owner = ctx.owner(request)
    form = by_name(values)
    version_id, set_name = form.pop("version"), form.pop("prompt_set")
    if not version_id:
        raise gr.Error("Pick a saved constitution version first (save one in the Constitution tab).")
    ctx.constitution(version_id, request)  # the visitor's own, or gr.Error
    try:
        cfg = train.TrainConfig(
            constitution_id=int(version_id),
            prompt_set=(set_name or "").strip() or "default",
            model=ctx.model_spec or "",
            owner=owner,
            **form_values(form),
        )
        if ctx.caps is not None and any(s.strip() for s in (cfg.attack_set, cfg.followup_set, cfg.instruction_set)):
            raise gr.Error(
                "In the public demo a run trains on the shipped attack, follow-up and instruction sets: "
                "leave the three set fields empty."
            )
        train.check_start(ctx.store, cfg)
        if ctx.caps is not None and not cfg.max_prompts:
            # "all" means "as many as the demo allows", the replay prompts they bring along included
            fits = lambda n: n + mix.replay_count(n, cfg.replay_fraction) <= ctx.caps.prompts
            cfg.max_prompts = max(filter(fits, range(1, ctx.caps.prompts + 1)))
        sampled = estimate.run_size(cfg, ctx.store)[0] if ctx.caps is not None else 0  # replay prompts count too
    except (train.TrainError, TypeError, ValueError) as exc:
        raise gr.Error(str(exc))
    ctx.limit(
        steps=cfg.steps,
        prompts=max(cfg.max_prompts, sampled, cfg.capability_gauge),
        max_new_tokens=cfg.sample_tokens,
        samples=cfg.samples_per_prompt,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        lora_r=cfg.lora_r,
    )
    job_id = jobs.submit(ctx.store, "train", cfg.to_dict(), owner=owner)
    return run_choices(ctx, owner, job_id)


def on_resume(ctx: AppContext, job_id, request: gr.Request):
    return run_choices(ctx, ctx.owner(request), ctx.resume_job(job_id, request, "run"))


def adapter_of(ctx: AppContext, job_id, request: gr.Request | None) -> tuple[dict, Path]:
    """The visitor's own run and its finished adapter, or gr.Error."""
    if not job_id:
        raise gr.Error("Pick a run first.")
    job = ctx.job(job_id, request)
    path = adapter_dir(ctx, job)
    if not path.is_dir():
        raise gr.Error("This run has no finished adapter yet.")
    return job, path


def on_export(ctx: AppContext, job_id, as_merged, strength, request: gr.Request):
    job, adapter = adapter_of(ctx, job_id, request)
    job_id, spec = job["id"], job["config"].get("model") or None
    out = download_dir() / f"run-{job_id}-{'merged' if as_merged else 'adapter'}"
    try:
        adapters.export(
            adapter,
            out,
            merged=bool(as_merged),
            strength=strength,
            model_spec=spec,
            models_dir=default_models_dir(ctx.store.home),
        )
    except adapters.AdapterError as exc:  # a strength outside its range included
        return None, error_text(exc)
    archive = shutil.make_archive(str(out), "zip", out)
    return archive, (
        f"Exported run {job_id} ({'merged bfloat16 model' if as_merged else 'peft adapter'}, strength "
        f"{adapters.check_strength(strength):g}) with its model card."
    )


def on_push(ctx: AppContext, job_id, repo, request: gr.Request):
    ctx.local_only("Pushing to the Hub")
    _, adapter = adapter_of(ctx, job_id, request)
    if not (repo or "").strip():
        return error_text(ValueError("give a repository id, e.g. me/pirate-adapter"))
    try:
        return f"Pushed to {adapters.push_to_hub(adapter, repo.strip())}"
    except Exception as exc:  # no token, network, permissions: shown, not raised
        return error_text(exc)


def build(ctx: AppContext) -> None:
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    widgets, run = c["widgets"], c["run"]
    fields = [*widgets.values(), c["prompt_set"]]
    for name in ("quantize", "precision"):
        widgets[name].change(on(on_choice), [widgets["quantize"], widgets["precision"]], c["chosen"], queue=False)
    # a set of inputs: the handler gets one {component: value} dict (by_name)
    c["measure"].click(on(on_measure), set(fields), [c["guess"], c["facts"]], concurrency_id=MODEL_QUEUE)
    for widget in fields:
        widget.change(on(on_form), set(fields), c["guess"], queue=False)
    # the lists follow the store through the page's poll (ui/poll.py), each when its part changed
    ctx.watch(on(run_list), run, run, on=("jobs",))
    shown = [c["status"], c["loss_plot"], c["heldout_plot"], c["gauge_plot"], c["log"], c["runs"], c["plotted"]]
    ctx.watch(on(poll), [run, c["plotted"]], shown, on=("jobs", "progress:train"))
    run.change(on(poll), [run, c["plotted"]], shown, show_progress="hidden")
    run.input(
        on(settings_of), run, [c["version"], c["picked"], c["prompt_set"], *widgets.values()], show_progress="hidden"
    )
    ctx.rebake_form = (c["version"], widgets["from_run"], c["mixing"])
    stale_notice.wire(ctx, c, run)
    curated.wire(ctx, c["version"], run, widgets["data"], c["curation"])
    c["start"].click(on(on_start), {c["version"], *fields}, run).then(**ctx.poll_now)
    c["stop"].click(on(on_stop, 30), run, None).then(**ctx.poll_now)
    wire_job_buttons(ctx, run, [c["start"]], c["stop"])
    c["resume"].click(on(on_resume), run, run).then(**ctx.poll_now)
    c["export"].click(on(on_export), [run, c["merged"], c["strength"]], [c["files"], c["export_msg"]])
    c["push"].click(on(on_push), [run, c["hub_id"]], c["export_msg"])
