"""Preference pairs, a sub-view of the Review tab: make them (the "prefs" job), review them, train on them.

One pair at a time: the prompt, the preferred answer and the other side by side, with the pair's
source and label. Accept, flip (the other answer is the better one: the pair is swapped and
accepted) or reject; every action is written to the store at once. Filters by version, status,
source and label confidence; a bulk action applies to every pair the filters show. Keys (while the
view is open, not typing): y accept, f flip, x reject, n next, p previous. Export the accepted
pairs as a Hugging Face preference file, import one, and start a DPO run on the accepted pairs.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

from ctxdistill import dpo, foreground, jobs, pair_files, prefs
from ctxdistill.pair_store import PAIR_SOURCES
from ctxdistill.plots import fig_curves, metric_frame
from ctxdistill.ui.common import (
    AppContext,
    bind,
    download_dir,
    drawn_key,
    job_status_html,
    on_resume,
    on_stop,
    students,
    version_options,
    wire_job_buttons,
)

ANY = "(any)"
STATUSES = ("pending", "accepted", "rejected", "all")
BULK = ("accept", "reject", "set pending")
IMPORT_TYPES = (".jsonl", ".json", ".csv", ".parquet")
DPO_DEFAULTS = dpo.DPOConfig()
PREFS_DEFAULTS = prefs.PrefsConfig()

KEYS_HTML = """<div id="pairs-keys">Keys: <span class="kbd">y</span> accept · <span class="kbd">f</span> flip
(the other answer is better) · <span class="kbd">x</span> reject · <span class="kbd">n</span> next ·
<span class="kbd">p</span> previous</div>"""

KEYS_JS = """
if (!window.ctxdistillPairKeys) {
  window.ctxdistillPairKeys = true;
  document.addEventListener('keydown', (ev) => {
    const accept = document.querySelector('#pairs-accept');
    if (!accept || accept.offsetParent === null) return;
    const t = ev.target;
    if (t && (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT' || t.isContentEditable)) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const id = {y: 'pairs-accept', f: 'pairs-flip', x: 'pairs-reject', n: 'pairs-next', p: 'pairs-prev'}[ev.key];
    const b = id && document.querySelector('#' + id);
    if (b) { ev.preventDefault(); b.click(); }
  });
}
"""


def filters_of(version_id, status, source, min_confidence) -> dict:
    return {
        "constitution_id": int(version_id) if version_id else None,
        "status": None if status == "all" else status,
        "source": None if source in (None, ANY) else source,
        "min_confidence": float(min_confidence or 0) or None,
    }


def layout() -> dict:
    gr.Markdown(
        "Preference pairs for the preference stage: two answers to one prompt, the better one first. "
        "AI-feedback labels are the judge's probability that the first is better; checks and revisions are certain."
    )
    with gr.Row():
        version = gr.Dropdown(label="Constitution version", choices=[], elem_id="pairs-version", scale=2)
        status = gr.Radio(list(STATUSES), value="pending", label="Status", elem_id="pairs-status")
        source = gr.Dropdown([ANY, *PAIR_SOURCES], value=ANY, label="Source", elem_id="pairs-source")
        confidence = gr.Slider(0, 1, value=0, step=0.05, label="Min label confidence", elem_id="pairs-confidence")
        reload = gr.Button("Reload", size="sm", elem_id="pairs-reload")
    filters = [version, status, source, confidence]
    gr.HTML(KEYS_HTML, js_on_load=KEYS_JS)
    position = gr.Markdown("No pairs yet.", elem_id="pairs-position")
    badge = gr.HTML(elem_id="pairs-badge")
    prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="pairs-prompt")
    with gr.Row():
        chosen = gr.Textbox(label="Preferred answer", interactive=False, lines=8, elem_id="pairs-chosen")
        rejected = gr.Textbox(label="Other answer", interactive=False, lines=8, elem_id="pairs-rejected")
    with gr.Row():
        prev = gr.Button("← Previous (p)", elem_id="pairs-prev")
        accept = gr.Button("Accept (y)", variant="primary", elem_id="pairs-accept")
        flip = gr.Button("Flip (f)", elem_id="pairs-flip")
        reject = gr.Button("Reject (x)", variant="stop", elem_id="pairs-reject")
        nxt = gr.Button("Next (n) →", elem_id="pairs-next")
    message = gr.Markdown(elem_id="pairs-msg")
    with gr.Row():
        bulk_action = gr.Dropdown(list(BULK), value="accept", label="Bulk action", elem_id="pairs-bulk-action")
        bulk = gr.Button("Apply to every pair the filters show", elem_id="pairs-bulk")
    with gr.Accordion("Make pairs", open=False):
        with gr.Row():
            from_run = gr.Number(
                label="Policy: run id (0 = the teacher)",
                info="filled with the version's newest distilled run",
                value=0,
                precision=0,
                elem_id="pairs-run",
            )
            sources = gr.Textbox(
                value="auto",
                label="Sources (checks, feedback, revision, instructions or auto)",
                elem_id="pairs-sources",
            )
            instruction_share = gr.Number(
                value=PREFS_DEFAULTS.instruction_share,
                label="Share of prompts with a user instruction",
                info="the answer edited to follow it is preferred (source: instructions)",
                elem_id="pairs-instruction-share",
            )
            threshold = gr.Number(
                value=PREFS_DEFAULTS.threshold, label="Drop labels within this of 0.5", elem_id="pairs-threshold"
            )
            limit = gr.Number(
                value=PREFS_DEFAULTS.limit,
                precision=0,
                label="Train prompts (0 = all)",
                info="in the public demo, 0 = as many as it allows",
                elem_id="pairs-limit",
            )
        make = gr.Button("Start the pairs job", elem_id="pairs-make")
    with gr.Accordion("Train on the accepted pairs (DPO)", open=False):
        with gr.Row():
            dpo_run = gr.Number(
                label="Start from run (distilled, or preference for a second round)",
                value=0,
                precision=0,
                elem_id="dpo-run",
            )
            beta = gr.Number(value=DPO_DEFAULTS.beta, label="beta", elem_id="dpo-beta")
            steps = gr.Number(value=DPO_DEFAULTS.steps, precision=0, label="Steps", elem_id="dpo-steps")
            anchor = gr.Number(
                value=DPO_DEFAULTS.anchor,
                label="Anchor to the teacher (0 = off)",
                info="weight of the distillation KL along the start run's training answers",
                elem_id="dpo-anchor",
            )
            chosen_nll = gr.Number(
                value=DPO_DEFAULTS.chosen_nll,
                label="Keep the chosen answers likely (0 = off)",
                info="weight of the chosen answers' negative log-likelihood per token (as RPO)",
                elem_id="dpo-chosen-nll",
            )
            where_they_differ = gr.Checkbox(
                value=DPO_DEFAULTS.where_they_differ,
                label="Score only where the two answers differ",
                info="text both answers share (around an edit) counts for neither side",
                elem_id="dpo-where-differ",
            )
        train = gr.Button("Start DPO run", variant="primary", elem_id="dpo-start")
    with gr.Row():
        job_status = gr.HTML(status_html(None), elem_id="pairs-job")
        stop = gr.Button("Stop", variant="secondary", interactive=False, scale=0, elem_id="pairs-stop")
        resume = gr.Button("Resume", scale=0, elem_id="pairs-resume")
    dpo_plot = gr.Plot(label="DPO run", show_label=False, visible=False, elem_id="dpo-plot")
    job_id = gr.State(None)
    plotted = gr.State(None)  # (job, step, state) the plot shows: an unchanged plot is not drawn again
    with gr.Accordion("Export / import", open=False):
        with gr.Row():
            export = gr.Button("Export accepted pairs (.jsonl)", elem_id="pairs-export")
            export_file = gr.File(label="Preference file", interactive=False, elem_id="pairs-export-file")
            upload = gr.File(label="Import a preference file", file_types=list(IMPORT_TYPES))
    named = (
        "version status source confidence reload position badge prompt chosen rejected prev accept flip reject nxt "
        "message bulk_action bulk from_run sources instruction_share threshold limit make dpo_run beta steps anchor "
        "chosen_nll where_they_differ train job_status stop resume dpo_plot job_id plotted export export_file upload"
    )
    here = locals()
    return {name: here[name] for name in named.split()} | {
        "filters": filters,
        "queue": gr.State([]),
        "pos": gr.State(0),
    }


# what a pair's meta says of how it was made, shown as badges
PAIR_MARKS = (
    ("edit", "chosen: the other edited to pass the checks"),
    ("instruction", "chosen: the other edited to follow the user's instruction"),
    ("flipped", "flipped by a reviewer"),
    ("unfinished", "cut by the sampling budget: trained without an end of turn"),
)


def badge_html(pair: dict | None) -> str:
    if pair is None:
        return ""
    meta = pair.get("meta") or {}
    bits = [f"source: {pair['source']}", f"label {pair['label']:.2f}", f"confidence {pair['confidence']:.2f}"]
    bits += [f"principle {p}" for p in ([meta["principle"]] if meta.get("principle") else meta.get("principles", []))]
    bits += [say for key, say in PAIR_MARKS if meta.get(key)]
    return " ".join(f"<span class='badge'>{html.escape(str(b))}</span>" for b in [pair["status"], *bits])


def render(ctx: AppContext, owner: str, ids: list[int], at: int, msg: str = ""):
    at = max(0, min(at, len(ids) - 1)) if ids else 0
    pair = ctx.store.get_pair(ids[at], owner=owner) if ids else None
    where = f"Pair {at + 1} of {len(ids)} (#{pair['id']})" if pair else "No pairs match the filters."
    if pair is None:
        return ids, at, where, "", "", "", "", msg
    return ids, at, where, badge_html(pair), pair["prompt"], pair["chosen"], pair["rejected"], msg


def load_queue(ctx: AppContext, request: gr.Request, *filter_values):
    owner = ctx.owner(request)
    f = filters_of(*filter_values)
    ids = [p["id"] for p in ctx.store.list_pairs(owner=owner, **f)] if f["constitution_id"] else []
    counts = (
        ctx.store.count_pairs(owner=owner, constitution_id=f["constitution_id"]) if ids or f["constitution_id"] else {}
    )
    msg = " · ".join(f"{k} {v}" for k, v in counts.items())
    return render(ctx, owner, ids, 0, msg)


def on_load(ctx: AppContext, request: gr.Request, current):
    owner = ctx.owner(request)
    versions = version_options(ctx, owner)
    having = {p["constitution_id"] for p in ctx.store.list_pairs(owner=owner)}
    ids = [v[1] for v in versions]
    pick = current if current in ids else next((i for i in ids if i in having), ids[0] if ids else None)
    return gr.update(choices=versions, value=pick)


def distilled_run(ctx: AppContext, request: gr.Request, version_id) -> tuple[int, int]:
    """The picked version's newest finished distilled run (0 where there is none), for both the pairs'
    policy and the DPO start: the measured defaults make pairs from the run that DPO then starts from."""
    owner, version = ctx.owner(request), int(version_id or 0)
    run = next((j["id"] for j in students(ctx, owner) if j["config"].get("constitution_id") == version), 0)
    return run, run


def act(ctx: AppContext, what: str, request: gr.Request, ids, at, *filter_values):
    owner = ctx.owner(request)
    if not ids:
        return render(ctx, owner, ids, at, "Nothing to act on.")
    pair_id = ids[min(at, len(ids) - 1)]
    if what == "flip":
        try:
            ctx.store.flip_pair(pair_id, owner=owner)
        except prefs.StoreError as exc:
            raise gr.Error(str(exc)) from None
    else:
        ctx.store.set_pairs_status([pair_id], what, owner=owner)
    return render(ctx, owner, ids, at + 1, f"Pair #{pair_id} {'flipped and accepted' if what == 'flip' else what}.")


def move(ctx: AppContext, step: int, request: gr.Request, ids, at):
    return render(ctx, ctx.owner(request), ids, at + step)


def on_bulk(ctx: AppContext, request: gr.Request, action, *filter_values):
    owner = ctx.owner(request)
    f = filters_of(*filter_values)
    if not f["constitution_id"]:
        raise gr.Error("Pick a constitution version first.")
    status = {"accept": "accepted", "reject": "rejected", "set pending": "pending"}[action]
    n = ctx.store.set_pairs_status([p["id"] for p in ctx.store.list_pairs(owner=owner, **f)], status, owner=owner)
    gr.Info(f"{n} pairs set to {status}.")


def status_html(job: dict | None) -> str:
    """The pairs job or DPO run this view started (or the newest one): its live line and bar, then what it
    made (pairs by source and the AI feedback's agreement with the checks; a DPO run's figures)."""
    result = (job or {}).get("result") or {}
    notes = (html.escape(foreground.summary(job["kind"], result)),) if job and job["state"] == "done" and result else ()
    return job_status_html(job, "pairs-job-state", "No pairs job or DPO run yet.", notes=notes)


DPO_PANELS = (
    ({"dpo_loss", "reward_margin", "chosen_nll"}, "DPO loss and reward margin", None),
    ({"accuracy"}, "Preference accuracy (margin > 0)", (-0.05, 1.05)),
    ({"heldout_kl", "anchor_kl"}, "KL to the teacher, nats/token", None),
)
DPO_LABELS = {
    "dpo_loss": "DPO loss",
    "reward_margin": "reward margin",
    "heldout_kl": "held-out KL",
    "anchor_kl": "KL along the anchor answers",
    "chosen_nll": "chosen NLL",
}


def dpo_figure(ctx: AppContext, job: dict):
    """A DPO run's curves: loss and margin, accuracy, and how far it moves from the teacher (held-out KL)."""
    rows = ctx.store.get_metrics(job["id"])
    return fig_curves(*((metric_frame(rows, names, DPO_LABELS), title, ylim) for names, title, ylim in DPO_PANELS))


def on_status(ctx: AppContext, job_id, plotted, request: gr.Request):
    """The job's line and, for a DPO run, its curves (drawn again only when its step or state moved)."""
    job = ctx.find_job(job_id, request)
    key = drawn_key(job)
    if key == plotted:
        plot = gr.skip()
    else:
        figure = dpo_figure(ctx, job) if job and job["kind"] == "dpo" else None
        plot = gr.update(value=figure, visible=figure is not None)
    return status_html(job), plot, key


def newest_job(ctx: AppContext, request: gr.Request):
    """The visitor's newest pairs job or DPO run: a reload finds it again, running or finished."""
    owner = ctx.owner(request)
    found = [j for kind in ("prefs", "dpo") for j in jobs.list_jobs(ctx.store, kind=kind, owner=owner, limit=1)]
    return max((j["id"] for j in found), default=None)


def on_make(ctx: AppContext, request: gr.Request, version_id, from_run, sources, threshold, limit, instruction_share):
    owner = ctx.owner(request)
    if not version_id:
        raise gr.Error("Pick a constitution version first.")
    cfg = prefs.PrefsConfig(
        constitution_id=int(version_id),
        from_run=int(from_run or 0),
        sources=str(sources or "auto"),
        threshold=float(PREFS_DEFAULTS.threshold if threshold is None else threshold),
        limit=int(limit or 0),
        instruction_share=float(PREFS_DEFAULTS.instruction_share if instruction_share is None else instruction_share),
        owner=owner,
        model=ctx.model_spec or "",
    )
    try:
        prompts = prefs.check_start(ctx.store, cfg)
    except (ValueError, prefs.StoreError) as exc:
        raise gr.Error(str(exc)) from None
    ctx.limit(prompts=len(prompts), pairs=len(prompts))
    return jobs.submit(ctx.store, "prefs", cfg.to_dict(), owner=owner)


def on_train(
    ctx: AppContext, request: gr.Request, version_id, from_run, beta, steps, anchor, chosen_nll, where_they_differ
):
    owner = ctx.owner(request)
    try:
        cfg = dpo.DPOConfig(
            from_run=int(from_run or 0),
            constitution_id=int(version_id or 0),
            beta=float("nan") if beta is None else float(beta),
            steps=int(steps or 0),
            anchor=float("nan") if anchor is None else float(anchor),
            chosen_nll=float("nan") if chosen_nll is None else float(chosen_nll),
            where_they_differ=bool(where_they_differ),
            owner=owner,
            model=ctx.model_spec or "",
        )
        ctx.limit(steps=cfg.steps)
        dpo.check_start(ctx.store, cfg)
    except (ValueError, prefs.StoreError) as exc:
        raise gr.Error(str(exc)) from None
    return jobs.submit(ctx.store, "dpo", cfg.to_dict(), owner=owner)


def on_export(ctx: AppContext, request: gr.Request, version_id):
    if not version_id:
        raise gr.Error("Pick a constitution version first.")
    path = download_dir() / f"pairs-v{int(version_id)}.jsonl"
    try:
        pair_files.export_pairs(ctx.store, path, constitution_id=int(version_id), owner=ctx.owner(request))
    except prefs.PrefsError as exc:
        raise gr.Error(str(exc)) from None
    return str(path)


def on_import(ctx: AppContext, request: gr.Request, version_id, file):
    if not version_id or not file:
        raise gr.Error("Pick a constitution version and a preference file.")
    path = ctx.upload(file if isinstance(file, str) else file.name, IMPORT_TYPES)
    try:
        out = pair_files.import_pairs(ctx.store, path, int(version_id), owner=ctx.owner(request))
    except prefs.PrefsError as exc:
        raise gr.Error(str(exc)) from None
    gr.Info(f"Imported {out['added']} new pairs of {out['rows']} rows, pending review.")


def build(ctx: AppContext) -> None:
    """The pairs view, built where it is called (inside the Review tab)."""
    c = layout()
    on = functools.partial(bind, ctx)
    quiet = dict(show_progress="hidden")
    filters, state = c["filters"], [c["queue"], c["pos"]]
    view = [*state, c["position"], c["badge"], c["prompt"], c["chosen"], c["rejected"], c["message"]]
    runs = [c["from_run"], c["dpo_run"]]
    loaded = ctx.blocks.load(on(on_load), c["version"], c["version"])
    loaded.then(on(load_queue), filters, view, **quiet).then(on(distilled_run), c["version"], runs, **quiet)
    for name in ("version", "status", "source", "confidence"):
        c[name].input(on(load_queue), filters, view, **quiet)
    c["version"].input(on(distilled_run), c["version"], runs, **quiet)
    c["reload"].click(on(on_load), c["version"], c["version"], **quiet).then(on(load_queue), filters, view, **quiet)
    for name, what in (("accept", "accepted"), ("reject", "rejected"), ("flip", "flip")):
        c[name].click(on(act, what), [*state, *filters], view, **quiet)
    for name, step in (("prev", -1), ("nxt", 1)):
        c[name].click(on(move, step), state, view, **quiet)
    c["bulk"].click(on(on_bulk), [c["bulk_action"], *filters], None).then(on(load_queue), filters, view, **quiet)
    make_in = [c["version"], c["from_run"], c["sources"], c["threshold"], c["limit"], c["instruction_share"]]
    c["make"].click(on(on_make), make_in, c["job_id"]).then(**ctx.poll_now)
    train_in = [
        c[name] for name in ("version", "dpo_run", "beta", "steps", "anchor", "chosen_nll", "where_they_differ")
    ]
    c["train"].click(on(on_train), train_in, c["job_id"]).then(**ctx.poll_now)
    # the job's line and bar follow the store through the page's poll; a reload finds the newest job again
    ctx.blocks.load(on(newest_job), None, c["job_id"])
    shown = [c["job_status"], c["dpo_plot"], c["plotted"]]
    ctx.watch(on(on_status), [c["job_id"], c["plotted"]], shown, on=("jobs", "progress:prefs", "progress:dpo"))
    c["job_id"].change(on(on_status), [c["job_id"], c["plotted"]], shown, **quiet)
    c["stop"].click(on(on_stop, 30), c["job_id"], None).then(**ctx.poll_now)
    c["resume"].click(on(on_resume), c["job_id"], None).then(**ctx.poll_now)
    wire_job_buttons(ctx, c["job_id"], [], c["stop"])  # Stop live while the job runs
    c["export"].click(on(on_export), c["version"], c["export_file"])
    c["upload"].upload(on(on_import), [c["version"], c["upload"]], None).then(on(load_queue), filters, view, **quiet)
    ctx.watch(on(load_queue), filters, view, on=("jobs",))  # a pairs job that ends brings its pairs
