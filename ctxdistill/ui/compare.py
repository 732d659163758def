"""Compare tab: score trained runs against the teacher on held-out prompts, look at the answers,
review them blind, see which principles matter, and export a report.

The evaluation runs as a job in a worker process (like training); this tab reads the store. The
blind A/B review pits the teacher against the evaluation's first run: keys 1-4 vote, and each vote
is written to the store when it is cast.
"""

from __future__ import annotations

import functools

import gradio as gr

from ctxdistill import constitution as cmod
from ctxdistill import estimate, eval_config, evaluate, jobs, plots, report, stats
from ctxdistill.models import ModelError, default_models_dir
from ctxdistill.ui import results
from ctxdistill.ui import stale as stale_notice
from ctxdistill.ui.common import (
    MODEL_QUEUE,
    UNMEASURED,
    AppContext,
    bind,
    download_dir,
    draft_constitution,
    job_status_html,
    on_stop,
    prompt_choices,
    slider,
    version_menu,
    wire_job_buttons,
)

SUITE_SIZES = ("quick", "full")
QUICK_SUITE = 6  # items per part of the quick robustness suite (its attacks: one prompt per kind)
INFLUENCE_TOKENS = 40  # tokens per teacher answer when measuring the draft's principles (at most the demo cap)
# the blind review's buttons: key, label, vote
VOTES = (("1", "A is better", "a"), ("2", "B is better", "b"), ("3", "Tie", "tie"), ("4", "Both bad", "both_bad"))
KEYS_JS = """
() => {
  document.addEventListener('keydown', (e) => {
    const tag = (e.target.tagName || '').toLowerCase();
    if (['input', 'textarea', 'select'].includes(tag) || e.target.isContentEditable) return;
    if (!['1', '2', '3', '4'].includes(e.key) || e.ctrlKey || e.metaKey || e.altKey) return;
    const panel = document.getElementById('ab-panel');
    const button = document.getElementById('ab-' + e.key);
    if (panel && button && panel.offsetParent !== null) { e.preventDefault(); button.click(); }
  });
}
"""


def eval_choices(ctx: AppContext, owner: str) -> list[tuple[str, int]]:
    out = []
    for ev in ctx.store.list_evals(owner=owner):
        r = ev["results"]
        runs = ", ".join(x["label"] for x in r.get("runs", [])) or "no runs"
        out.append(
            (
                f"eval {ev['id']} · {r['constitution']['name']} v{r['constitution']['id']} · {runs} · "
                f"{r['n_prompts']} prompts",
                ev["id"],
            )
        )
    return out


def _runs(ctx: AppContext, owner: str) -> list[tuple[str, int]]:
    return [
        (f"job {j['id']} · v{j['config'].get('constitution_id')} · {j['config'].get('loss')}", j["id"])
        for j in jobs.list_jobs(ctx.store, kind="train", owner=owner, limit=50)
        if j["state"] == "done"
    ] + [  # preference runs, with their lineage
        (f"job {j['id']} · DPO from run {j['config'].get('from_run')} · beta {j['config'].get('beta')}", j["id"])
        for j in jobs.list_jobs(ctx.store, kind="dpo", owner=owner, limit=50)
        if j["state"] == "done"
    ]


def status_html(job: dict | None) -> str:
    r = (job or {}).get("result") or {}
    notes = []
    if r.get("gap_closed") is not None:
        notes.append(
            f"KL {r['kl_base']:.4f} → {r['kl_student']:.4f} nats/token · gap closed {r['gap_closed']:.0%} "
            f"· {r['seconds']:.0f} s"
        )
    return job_status_html(job, "eval-status-text", "No evaluation running.", notes=tuple(notes))


def tally_markdown(tally: dict, student: str) -> str:
    if not tally["n"]:
        return "No votes yet: press **1**–**4** to vote."
    names = {"student": f"{student} better", "teacher": "teacher better", "tie": "tie", "both_bad": "both bad"}
    parts = [
        f"**{names[o]}** {tally['counts'][o]} ({report.fmt_estimate(tally['rates'][o], pct=True)})"
        for o in stats.VOTE_OUTCOMES
    ]
    return (
        f"**{tally['n']} votes** · "
        + " · ".join(parts)
        + "  \nStudent as good as the teacher (win or tie): "
        + report.fmt_estimate(tally["rates"]["student_or_tie"], pct=True)
    )


def next_blind(ctx: AppContext, ev: dict | None, reviewer: str) -> tuple[dict | None, str, str, str, str]:
    """(state, prompt, answer A, answer B, progress) of the first prompt this reviewer has not voted on."""
    if ev is None or not ev["results"]["runs"]:
        return None, "Pick an evaluation with at least one run to review it blind.", "", "", ""
    scored = ev["results"]
    student = scored["runs"][0]["label"]
    voted = {v["prompt_id"] for v in ctx.store.list_votes(ev["id"]) if v["reviewer"] == reviewer}
    todo = [p for p in scored["prompts"] if p["id"] not in voted]
    progress = f"{len(voted)} of {scored['n_prompts']} reviewed (teacher vs {student}, sides hidden and shuffled)"
    if not todo:
        return None, "All prompts reviewed.", "", "", progress
    p = todo[0]
    teacher_is_a = stats.blind_sides(ev["id"], p["id"], reviewer)
    a, b = ("teacher", student) if teacher_is_a else (student, "teacher")
    state = {"eval": ev["id"], "prompt": p["id"], "a_is": a}
    return state, f"**Prompt:** {p['text']}", p["answers"][a], p["answers"][b], progress


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name."""
    gr.Markdown(
        "Does the model **without** the constitution now answer as the teacher does, and what did it cost? "
        "Scores are on held-out prompts, each with its sample size and a bootstrap 95% interval."
    )
    with gr.Accordion("New evaluation", open=True):
        with gr.Row():
            version, _ = version_menu(ctx, "eval-version", scale=2)
            runs = gr.Dropdown(label="Runs (students)", choices=[], multiselect=True, elem_id="eval-runs", scale=3)
            prompt_set = gr.Textbox(
                label="Prompt set (held-out split)", value="default", elem_id="eval-prompt-set", scale=1
            )
        stale = stale_notice.layout("eval")
        with gr.Row():
            caps = ctx.caps  # in demo mode the fields stop at the caps (gradio refuses a number above its maximum)
            max_prompts = gr.Number(
                label="Max prompts (0 = all)",
                value=0,
                precision=0,
                minimum=0,
                maximum=caps.prompts if caps else None,
                elem_id="eval-max-prompts",
            )
            sample_tokens = gr.Number(
                label="Tokens per answer",
                value=40,
                precision=0,
                minimum=1,
                maximum=caps.max_new_tokens if caps else None,
                elem_id="eval-sample-tokens",
            )
            influence_n = gr.Number(
                label="Prompts for principle influence",
                value=8,
                precision=0,
                minimum=0,
                maximum=caps.prompts if caps else None,
                elem_id="eval-influence-n",
            )
            use_judge = gr.Checkbox(
                label="Model-as-judge (slow; rough on a 135M model)", value=False, elem_id="eval-judge"
            )
            use_robustness = gr.Checkbox(
                label="Robustness suite (capability, injection, second turn, placebo, savings)",
                value=True,
                elem_id="eval-robustness",
            )
            suite_size = gr.Radio(
                list(SUITE_SIZES),
                value="quick",
                label="Suite size",
                info=f"quick: {QUICK_SUITE} items per part; full: the whole suite (bounded by Max prompts when set)",
                elem_id="eval-suite-size",
            )
        with gr.Row():
            guess = gr.Markdown(elem_id="eval-estimate")
            measure_time = gr.Button("Estimate the time", size="sm", scale=0, elem_id="eval-estimate-button")
        with gr.Row():
            start = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
            stop = gr.Button("Stop", variant="secondary", interactive=False, elem_id="eval-stop")
        status = gr.HTML(status_html(None), elem_id="eval-status")
    job_id = gr.State(None)
    known = gr.State([])
    views = results.layout()
    with gr.Group(elem_id="ab-panel"):
        gr.Markdown(
            "### Blind A/B review\nWhich answer is better? The teacher and the student are shown as A and B "
            "in a random order. Keys: <span class='kbd'>1</span> A better · <span class='kbd'>2</span> B better · "
            "<span class='kbd'>3</span> tie · <span class='kbd'>4</span> both bad."
        )
        ab_state = gr.State(None)
        ab_prompt = gr.Markdown(elem_id="ab-prompt")
        with gr.Row():
            ab_a = gr.Textbox(label="A", lines=6, interactive=False, elem_id="ab-a")
            ab_b = gr.Textbox(label="B", lines=6, interactive=False, elem_id="ab-b")
        with gr.Row():
            buttons = [gr.Button(f"{k} · {text}", elem_id=f"ab-{k}", size="sm") for k, text, _ in VOTES]
        ab_progress = gr.Markdown(elem_id="ab-progress")
        ab_tally = gr.Markdown(elem_id="ab-tally")
    with gr.Accordion("Principle influence", open=True, elem_id="influence-panel"):
        gr.Markdown(
            "KL between the teacher with the whole constitution and with one principle removed, along the "
            "teacher's answers: which principles change behaviour and which are dead weight."
        )
        with gr.Row():
            influence_n_now = slider(
                min(2, caps.prompts) if caps else 2,
                min(32, caps.prompts) if caps else 32,
                value=8,
                step=1,
                label="Prompts",
                elem_id="influence-n",
            )
            influence_run = gr.Button("Measure the draft's principles now", elem_id="influence-run")
        influence_plot = gr.Plot(label="Principle influence", elem_id="influence-plot")
        influence_table = gr.Dataframe(interactive=False, wrap=True, elem_id="influence-table")
        baked = results.baked_layout()
    suite = results.robustness_layout()
    with gr.Row():
        fmt = gr.Radio(["html", "md", "json"], value="html", label="Report format", elem_id="report-format")
        export = gr.Button("Export report", elem_id="report-export")
    report_file = gr.File(label="Report", elem_id="report-file")
    return dict(
        version=version,
        runs=runs,
        prompt_set=prompt_set,
        max_prompts=max_prompts,
        sample_tokens=sample_tokens,
        influence_n=influence_n,
        use_judge=use_judge,
        start=start,
        stop=stop,
        status=status,
        job_id=job_id,
        known=known,
        ab_state=ab_state,
        ab_prompt=ab_prompt,
        ab_a=ab_a,
        ab_b=ab_b,
        buttons=buttons,
        ab_progress=ab_progress,
        ab_tally=ab_tally,
        influence_n_now=influence_n_now,
        influence_run=influence_run,
        influence_plot=influence_plot,
        influence_table=influence_table,
        fmt=fmt,
        export=export,
        report_file=report_file,
        use_robustness=use_robustness,
        suite_size=suite_size,
        guess=guess,
        measure_time=measure_time,
        **views,
        **suite,
        **baked,
        **stale,
    )


# ---------------------------------------------------------------- loading and the job


def on_load(ctx: AppContext, request: gr.Request):
    latest = jobs.list_jobs(ctx.store, kind="evaluate", owner=ctx.owner(request), limit=1)
    return latest[0]["id"] if latest else None


def run_list(ctx: AppContext, current, request: gr.Request):
    choices = _runs(ctx, ctx.owner(request))
    ids = [c[1] for c in choices]
    return gr.update(choices=choices, value=[r for r in current or [] if r in ids])


def form_config(
    ctx: AppContext, version_id, run_ids, set_name, n, tokens, n_influence, judge, robust, size, owner: str
) -> eval_config.EvalConfig:
    """The form as an EvalConfig, its robustness suite scaled to the form: each part at most Max prompts
    (when set), QUICK_SUITE for the quick suite, and the demo's cap."""
    cfg = eval_config.EvalConfig(
        constitution_id=int(version_id),
        runs=[int(r) for r in run_ids or []],
        prompt_set=(set_name or "").strip() or "default",
        max_prompts=int(n or 0),
        sample_tokens=int(tokens or 40),
        influence_prompts=int(n_influence or 0),
        judge=bool(judge),
        robustness=bool(robust),
        model=ctx.model_spec or "",
        owner=owner,
    )
    if ctx.caps is not None and not cfg.max_prompts:
        cfg.max_prompts = ctx.caps.prompts  # "all" means "as many as the demo allows"
    caps = [c for c in (cfg.max_prompts, QUICK_SUITE if size != "full" else 0) if c]
    try:
        return eval_config.fit_suite(cfg, min(caps)) if caps else cfg
    except eval_config.EvalError as exc:
        raise gr.Error(str(exc)) from None


def on_start(
    ctx: AppContext,
    version_id,
    run_ids,
    set_name,
    n,
    tokens,
    n_influence,
    judge,
    robust=True,
    size="quick",
    request: gr.Request = None,
):
    owner = ctx.owner(request)
    if not version_id:
        raise gr.Error("Pick a saved constitution version first (save one in the Constitution tab).")
    ctx.constitution(version_id, request)  # the visitor's own version and runs only
    for run_id in run_ids or []:
        ctx.job(run_id, request)
    cfg = form_config(ctx, version_id, run_ids, set_name, n, tokens, n_influence, judge, robust, size, owner)
    try:
        the_plan = eval_config.plan(cfg, ctx.store)
    except eval_config.EvalError as exc:
        raise gr.Error(str(exc)) from None
    ctx.limit(prompts=eval_config.largest_part(cfg, the_plan), max_new_tokens=cfg.sample_tokens)
    return jobs.submit(ctx.store, "evaluate", cfg.to_dict(), owner=owner)


def eval_estimate(
    ctx: AppContext,
    measure: bool,
    version_id,
    run_ids,
    set_name,
    n,
    tokens,
    n_influence,
    judge,
    robust,
    size,
    request: gr.Request,
):
    """What the form's evaluation will do (the suite's parts, runs trained on another version) and its
    predicted time on this machine (estimate.py) once measured; a note where it cannot be planned."""
    if not version_id:
        return "Pick a constitution version to see what the evaluation does and how long it takes."
    form = (version_id, run_ids, set_name, n, tokens, n_influence, judge, robust, size)
    try:
        ctx.constitution(version_id, request)
        for run_id in run_ids or []:
            ctx.job(run_id, request)
        cfg = form_config(ctx, *form, ctx.owner(request))
        the_plan = eval_config.plan(cfg, ctx.store)
    except gr.Error as exc:
        return f"**Cannot start:** {exc.message}"
    except (eval_config.EvalError, ValueError, TypeError) as exc:
        return f"**Cannot start:** {exc}"
    lines = [
        f"**{len(the_plan.prompts)} held-out prompts** × {len(the_plan.runs)} student(s)"
        + (
            f"; robustness suite: {len(the_plan.capability)} capability items, {len(the_plan.benign)} benign "
            f"instructions, {len(the_plan.attacks)} kinds of injection × {min(cfg.attack_prompts, cfg.suite_prompts)} "
            f"prompt(s), {min(cfg.suite_prompts, len(the_plan.prompts))} second-turn and placebo prompts"
            if cfg.robustness
            else "; no robustness suite"
        )
        + "."
    ]
    for run in the_plan.runs:
        trained = run["config"].get("constitution_id")
        if trained is not None and int(trained) != int(version_id):
            lines.append(
                f"**Other version:** run {run['run']} was trained on v{trained}; it will be scored against the "
                f"teacher of v{int(version_id)}."
            )
    cal = estimate.cached(ctx.model_spec, cfg.quantize, cfg.precision, default_models_dir(ctx.store.home), measure)
    units = evaluate.units(cfg, the_plan)
    if cal is None:
        lines.append(UNMEASURED)
    else:
        seconds = estimate.predict_eval(cal, units, cfg.sample_tokens) + cal.load_s
        lines.append(
            f"**Time on this machine:** about {estimate.duration(seconds)} ({units} answers of up to "
            f"{cfg.sample_tokens} tokens; measured with {cal.precision}).{estimate.load_note()}"
        )
    return "  \n".join(lines)


def poll(ctx: AppContext, job, seen, request: gr.Request):
    """The job's status; the list of evaluations when one was added (the newest is then shown)."""
    owner = ctx.owner(request)
    current = ctx.find_job(job, request)
    evals = eval_choices(ctx, owner)
    ids = [e[1] for e in evals]
    if ids == seen:
        return status_html(current), gr.skip(), gr.skip()
    return status_html(current), gr.update(choices=evals, value=ids[0] if ids else None), ids


# ---------------------------------------------------------------- views of one evaluation


# ---------------------------------------------------------------- blind review


def show_blind(ctx: AppContext, eval_id, request: gr.Request):
    owner = ctx.owner(request)
    ev = results.evaluation(ctx, eval_id, owner)
    state, prompt, a, b, progress = next_blind(ctx, ev, owner)
    tally = (
        tally_markdown(report.eval_tally(ctx.store, ev["id"]), ev["results"]["runs"][0]["label"])
        if ev and ev["results"]["runs"]
        else ""
    )
    return state, prompt, a, b, progress, tally


def cast(ctx: AppContext, state, button: str, request: gr.Request):
    """A vote from the button pressed (its label starts with its key), then the next prompt."""
    owner = ctx.owner(request)
    if not state:
        raise gr.Error("Nothing to vote on: pick an evaluation with a run, or all prompts are reviewed.")
    ev = results.evaluation(ctx, state["eval"], owner)
    if ev is None:
        raise gr.Error("That evaluation is gone.")
    choice = next(vote for key, _, vote in VOTES if button.startswith(key + " "))
    ctx.store.add_vote(ev["id"], state["prompt"], choice, state["a_is"], reviewer=owner)
    return show_blind(ctx, ev["id"], request)


# ---------------------------------------------------------------- principle influence of the draft


def measure(ctx: AppContext, draft, n, request: gr.Request):
    ctx.limit(prompts=int(n))
    c = draft_constitution(draft)
    try:
        cmod.ensure_valid(c)
        model, tokenizer = ctx.model()
    except (ValueError, ModelError) as exc:
        raise gr.Error(str(exc)) from None
    tokens = min(INFLUENCE_TOKENS, ctx.caps.max_new_tokens) if ctx.caps else INFLUENCE_TOKENS
    prompts = prompt_choices(ctx, ctx.owner(request), "heldout")[: int(n)]
    if not prompts:
        raise gr.Error("No held-out prompts in the workspace: import a prompt set with a held-out split.")
    rows = evaluate.influence(model, tokenizer, c, prompts, sample_tokens=tokens, n_boot=500)
    return plots.fig_influence(rows), results.influence_frame(rows)


# ---------------------------------------------------------------- report


def on_export(ctx: AppContext, eval_id, kind, request: gr.Request):
    ev = results.evaluation(ctx, eval_id, ctx.owner(request))
    if ev is None:
        raise gr.Error("Pick an evaluation first.")
    path = download_dir() / f"eval-{ev['id']}.{kind}"
    return str(report.write_report(ev["results"], path, report.eval_tally(ctx.store, ev["id"])))


def build(ctx: AppContext) -> None:
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    model = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
    ctx.blocks.load(on(on_load), None, c["job_id"])
    ctx.blocks.load(None, None, None, js=KEYS_JS)
    # the lists follow the store through the page's poll (ui/poll.py), each when its part changed
    ctx.watch(on(run_list), c["runs"], c["runs"], on=("jobs",))
    form = [
        c[name]
        for name in (
            "version",
            "runs",
            "prompt_set",
            "max_prompts",
            "sample_tokens",
            "influence_n",
            "use_judge",
            "use_robustness",
            "suite_size",
        )
    ]
    c["start"].click(on(on_start), form, c["job_id"]).then(**ctx.poll_now)
    c["measure_time"].click(on(eval_estimate, True), form, c["guess"], concurrency_id=MODEL_QUEUE)
    for field in form:
        field.change(on(eval_estimate, False), form, c["guess"], queue=False, show_progress="hidden")
    c["stop"].click(on(on_stop, 10), c["job_id"], None).then(**ctx.poll_now)
    wire_job_buttons(ctx, c["job_id"], [c["start"]], c["stop"])
    state = [c["job_id"], c["known"]]
    ctx.watch(on(poll), state, [c["status"], c["pick"], c["known"]], on=("jobs", "progress:evaluate"))
    c["job_id"].change(on(poll), state, [c["status"], c["pick"], c["known"]], show_progress="hidden")

    results.wire(ctx, c)

    blind = [c[name] for name in ("ab_state", "ab_prompt", "ab_a", "ab_b", "ab_progress", "ab_tally")]
    c["pick"].change(on(show_blind), c["pick"], blind)
    for button in c["buttons"]:
        button.click(on(cast), [c["ab_state"], button], blind, show_progress="hidden")

    influence = ([ctx.draft, c["influence_n_now"]], [c["influence_plot"], c["influence_table"]])
    c["influence_run"].click(on(measure), *influence, **model)
    if ctx.influence_button is not None and ctx.tabs is not None:
        ctx.influence_button.click(lambda: gr.Tabs(selected="compare"), None, ctx.tabs).then(
            None,
            js="() => { setTimeout(() => document.getElementById('influence-panel')"
            "?.scrollIntoView({block: 'start'}), 300); }",
        ).then(on(measure), *influence, **model)
    c["export"].click(on(on_export), [c["pick"], c["fmt"]], c["report_file"])
    stale_notice.wire(ctx, c, c["runs"])
