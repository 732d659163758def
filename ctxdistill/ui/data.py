"""Data tab: prompt sets (import with a column picker), the sampling job and the
critique/revise job, each with a progress bar, cancel and resume.

Jobs run in worker processes; the status box reads the store on a timer, so a reload (or
another browser) re-attaches to whatever runs.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import gradio as gr
import pandas as pd

from ctxdistill import curate, estimate, jobs
from ctxdistill.generate import MAX_BATCH, GenerateConfig
from ctxdistill.models import default_models_dir
from ctxdistill.prompts import (
    ImportFileError,
    columns,
    ensure_default_prompts,
    guess_column,
    import_prompts,
    read_table,
    select_prompts,
)
from ctxdistill.revise import ORDERS, STARTS, ReviseConfig
from ctxdistill.ui.common import (
    MODEL_QUEUE,
    UNMEASURED,
    AppContext,
    bind,
    job_status_html,
    keep,
    on_resume,
    on_stop,
    version_menu,
    wire_job_buttons,
)

NONE = "(none)"
JOB_KINDS = ("generate", "revise")
SET_COLUMNS = ["set", "train", "held-out", "source"]
UPLOAD_TYPES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt", ".parquet")


def sets_table(ctx: AppContext, owner: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [s["name"], s["n_train"], s["n_heldout"], Path(s["source"]).name if s["source"] else ""]
            for s in ctx.store.prompt_sets(owner=owner)
        ],
        columns=SET_COLUMNS,
    )


def job_choices(ctx: AppContext, owner: str) -> list[tuple[str, int]]:
    rows = [j for j in jobs.list_jobs(ctx.store, owner=owner, limit=50) if j["kind"] in JOB_KINDS]
    return [(f"job {j['id']} · {j['kind']} · {j['state']}", j["id"]) for j in rows]


def job_html(job: dict | None) -> str:
    notes = []
    if job and job["error"]:
        notes.append("Press Resume to finish the rest.")
    if job and job["state"] == "done" and job["result"]:
        flags = ", ".join(f"{curate.FLAG_LABELS[k]} {v}" for k, v in (job["result"].get("flags") or {}).items() if v)
        notes.append(f"Done. Flags: {html.escape(flags) or 'none'}. Review the samples in the Review tab.")
    counter = f"{job['progress_done']}/{job['progress_total'] or '?'}" if job else ""
    return job_status_html(job, "data-job-text", "No sampling or revise job yet.", counter, tuple(notes))


def _source(ctx: AppContext, upload, dataset_path) -> str:
    """The upload once its type and size are checked or, locally, a datasets directory or hub id
    (in demo mode a visitor may not read the server's files nor make it download a dataset)."""
    if upload:
        return ctx.upload(upload, UPLOAD_TYPES)
    path = (dataset_path or "").strip()
    if path and ctx.demo:
        raise gr.Error("The public demo imports uploaded files only.")
    if not path:
        raise gr.Error("Upload a file, or give a datasets directory or hub id.")
    return path


def sampling_estimate(ctx: AppContext, owner: str, set_name, search, limit, n, max_new, measure: bool) -> str:
    """The sampling job's predicted time on this machine, from the process's calibration (estimate.py)."""
    g = GenerateConfig()
    cal = estimate.cached(ctx.model_spec, g.quantize, g.precision, default_models_dir(ctx.store.home), measure)
    if cal is None:
        return UNMEASURED
    ensure_default_prompts(ctx.store, owner)
    prompts = select_prompts(ctx.store, set_name or "default", search=search or "", limit=int(limit or 0), owner=owner)
    rows = len(prompts) * (int(n or 1) + (1 if g.unprompted else 0))
    seconds = estimate.predict_sampling(cal, rows, int(max_new or 0))
    return (
        f"**Time on this machine:** about {estimate.duration(seconds)} for {len(prompts)} prompts "
        f"({rows} answers of up to {int(max_new or 0)} tokens; measured with {cal.precision})." + estimate.load_note()
    )


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name."""
    gr.Markdown(
        "### Prompt sets\nThe shipped set `default` is there from the start. Held-out prompts are never "
        "sampled for training: they measure the student."
    )
    sets = gr.Dataframe(headers=SET_COLUMNS, interactive=False, elem_id="data-sets")
    with gr.Accordion("Import prompts", open=False):
        with gr.Row():
            upload = gr.File(
                label="CSV, TSV, JSONL, JSON, TXT or Parquet",
                type="filepath",
                file_types=list(UPLOAD_TYPES),
                elem_id="data-upload",
            )
            with gr.Column():
                dataset_path = gr.Textbox(
                    label="…or a datasets directory / hub id", elem_id="data-dataset-path", visible=not ctx.demo
                )
                set_name = gr.Textbox(label="Prompt set name", elem_id="data-set-name")
                recipe = gr.Checkbox(
                    label="HF constitutional-AI recipe dataset (init_prompt, init_response, critic_*, "
                    "revision_*): bring its samples into the review queue",
                    elem_id="data-recipe",
                )
        with gr.Row():
            column = gr.Dropdown(label="Prompt column", choices=[], elem_id="data-column")
            split_column = gr.Dropdown(
                label="Split column (train / held-out)", choices=[NONE], value=NONE, elem_id="data-split-column"
            )
            heldout = gr.Slider(
                0, 0.5, value=0.1, step=0.05, label="Held out when there is no split column", elem_id="data-heldout"
            )
        peek = gr.Dataframe(label="First rows", interactive=False, max_height=200, elem_id="data-peek")
        do_import = gr.Button("Import", variant="primary", elem_id="data-import")
        import_msg = gr.Markdown(elem_id="data-import-msg")

    gr.Markdown(
        "### Sample the teacher\nEvery train prompt of the set, answered with the constitution (n samples) "
        "and once without it. Restarting a stopped job continues where it stopped."
    )
    g = GenerateConfig()
    caps = ctx.caps  # in demo mode the fields stop at the caps (gradio refuses a number above its maximum)
    tokens = {"value": min(96, caps.max_new_tokens), "maximum": caps.max_new_tokens} if caps else {"value": 96}
    with gr.Row():
        version, _ = version_menu(ctx, "gen-version", scale=2)
        prompt_set = gr.Dropdown(label="Prompt set", choices=[], elem_id="gen-set", scale=1)
        search = gr.Textbox(label="Only prompts containing", elem_id="gen-search", scale=1)
        limit = gr.Number(
            label="At most (0 = all)",
            value=0,
            precision=0,
            maximum=caps.prompts if caps else None,
            elem_id="gen-limit",
            scale=1,
        )
    with gr.Row():
        n = gr.Number(
            label="Samples per prompt",
            value=1,
            precision=0,
            minimum=1,
            maximum=caps.samples if caps else 16,
            elem_id="gen-n",
        )
        max_new = gr.Number(label="Max new tokens", precision=0, elem_id="gen-max-new-tokens", **tokens)
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)", elem_id="gen-temperature")
        top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p", elem_id="gen-top-p")
        batch = gr.Number(
            label="Prompts per batch",
            value=min(g.batch_size, caps.batch_size) if caps else g.batch_size,
            precision=0,
            minimum=1,
            maximum=caps.batch_size if caps else MAX_BATCH,
            elem_id="gen-batch",
        )
    with gr.Row():
        gen_time = gr.Markdown(elem_id="gen-estimate")
        gen_measure = gr.Button("Estimate the time", size="sm", scale=0, elem_id="gen-estimate-button")
    start_gen = gr.Button("Start sampling", variant="primary", elem_id="gen-start")

    gr.Markdown(
        "### Critique and revise (SL-CAI)\nEach round picks a principle, asks the model to critique the "
        "current answer with its critique request, then to revise it. The whole chain is kept."
    )
    with gr.Row():
        rounds = gr.Number(
            label="Rounds", value=1, precision=0, minimum=1, maximum=caps.rounds if caps else 8, elem_id="rev-rounds"
        )
        order = gr.Radio(list(ORDERS), value="cycle", label="Principle per round", elem_id="rev-order")
        start_from = gr.Radio(
            list(STARTS), value=ReviseConfig.start, label="Start from the answer", elem_id="rev-start"
        )
        rev_max_new = gr.Number(label="Max new tokens", precision=0, elem_id="rev-max-new-tokens", **tokens)
    start_rev = gr.Button("Start critique & revise", elem_id="rev-start-button")

    gr.Markdown("### Jobs")
    job = gr.Dropdown(label="Job", choices=[], elem_id="data-job")
    status = gr.HTML(job_html(None), elem_id="data-job-status", js_on_load=None)
    with gr.Row():
        cancel = gr.Button("Cancel", variant="secondary", interactive=False, elem_id="data-cancel")
        resume = gr.Button("Resume", elem_id="data-resume")
    return dict(
        sets=sets,
        upload=upload,
        dataset_path=dataset_path,
        set_name=set_name,
        recipe=recipe,
        column=column,
        split_column=split_column,
        heldout=heldout,
        peek=peek,
        do_import=do_import,
        import_msg=import_msg,
        version=version,
        prompt_set=prompt_set,
        search=search,
        limit=limit,
        n=n,
        max_new=max_new,
        temperature=temperature,
        top_p=top_p,
        batch=batch,
        gen_time=gen_time,
        gen_measure=gen_measure,
        start_gen=start_gen,
        rounds=rounds,
        order=order,
        start_from=start_from,
        rev_max_new=rev_max_new,
        start_rev=start_rev,
        job=job,
        status=status,
        cancel=cancel,
        resume=resume,
    )


# The lists follow the store through the page's poll, each only when its part changed.
def set_lists(ctx: AppContext, current, request: gr.Request):
    owner = ctx.owner(request)
    ensure_default_prompts(ctx.store, owner)
    names = [(s["name"], s["name"]) for s in ctx.store.prompt_sets(owner=owner)]
    return sets_table(ctx, owner), keep(names, current, "default")


def job_list(ctx: AppContext, current, request: gr.Request):
    return keep(job_choices(ctx, ctx.owner(request)), current)


def on_source(ctx: AppContext, upload, dataset_path):
    """Read the chosen file once to offer its columns and show its first rows."""
    if not (upload or (dataset_path or "").strip()):
        return gr.update(choices=[], value=None), gr.update(choices=[NONE], value=NONE), None, ""
    try:
        records = read_table(_source(ctx, upload, dataset_path))
    except ImportFileError as exc:
        return gr.update(choices=[], value=None), gr.update(choices=[NONE], value=NONE), None, f"**Error:** {exc}"
    cols = columns(records)
    return (
        gr.update(choices=cols, value=guess_column(cols)),
        gr.update(choices=[NONE, *cols], value="split" if "split" in cols else NONE),
        pd.DataFrame(records[:5]).astype(str),
        f"{len(records)} records; columns: {', '.join(cols)}",
    )


def name_of_upload(path) -> str:
    """The set name a new upload suggests: its file name without the suffix."""
    return Path(path).stem if path else ""


def on_import(ctx: AppContext, upload, dataset_path, name, col, split_col, frac, as_recipe, request: gr.Request):
    owner = ctx.owner(request)
    source = _source(ctx, upload, dataset_path)
    label = Path(str(source)).name
    try:
        if ctx.caps is not None:  # the cap is on the set, however many files it is imported from
            have = {s["name"]: s["n_train"] + s["n_heldout"] for s in ctx.store.prompt_sets(owner=owner)}
            ctx.limit(prompts=have.get((name or "").strip() or Path(label).stem, 0) + len(read_table(source)))
        if as_recipe:
            r = curate.import_recipe_dataset(ctx.store, source, (name or "").strip() or Path(label).stem, owner=owner)
            msg = (
                f"Imported **{r['samples']}** samples ({r['rounds']} revision rounds) into set `{r['set']}`, "
                f"constitution version v{r['constitution_id']}: review them in the Review tab."
            )
        else:
            r = import_prompts(
                ctx.store,
                name,
                source,
                column=col or None,
                split_column=None if split_col in (None, NONE) else split_col,
                heldout_fraction=float(frac),
                owner=owner,
            )
            msg = (
                f"Added **{r['added']}** prompts to `{r['set']}` ({r['duplicates']} duplicates and "
                f"{r['empty']} empty rows skipped). The set has {r['n_train']} train and "
                f"{r['n_heldout']} held-out prompts."
            )
    except (ImportFileError, ValueError) as exc:
        return f"**Not imported:** {exc}"
    return msg


def submit(ctx: AppContext, kind: str, cfg):
    try:
        cfg.validate()
    except ValueError as exc:
        raise gr.Error(str(exc))
    job_id = jobs.submit(ctx.store, kind, cfg.to_dict(), owner=cfg.owner)
    return keep(job_choices(ctx, cfg.owner), job_id)


def on_generate(
    ctx: AppContext, version_id, set_name_, search_, limit_, n_, max_new_, temp, top_p_, batch_, request: gr.Request
):
    owner = ctx.owner(request)
    if not version_id:
        raise gr.Error("Pick a saved constitution version first (save one in the Constitution tab).")
    ctx.constitution(version_id, request)  # the visitor's own, or gr.Error
    cfg = GenerateConfig(
        set_name=set_name_ or "default",
        constitution_id=int(version_id),
        search=search_ or "",
        limit=int(limit_ or 0),
        batch_size=int(batch_ or 1),
        model=ctx.model_spec or "",
        owner=owner,
        sampling={
            "n": int(n_ or 1),
            "max_new_tokens": int(max_new_ or 0),
            "temperature": float(temp),
            "top_p": float(top_p_),
        },
    )
    if ctx.caps is not None and not cfg.limit:
        cfg.limit = ctx.caps.prompts  # "all" means "as many as the demo allows"
    ctx.limit(
        prompts=cfg.limit,
        samples=cfg.sampling["n"],
        max_new_tokens=cfg.sampling["max_new_tokens"],
        batch_size=cfg.batch_size,
    )
    if not select_prompts(ctx.store, cfg.set_name, search=cfg.search, limit=cfg.limit, owner=owner):
        raise gr.Error(f"Prompt set {cfg.set_name!r} has no train prompts matching the filter.")
    return submit(ctx, "generate", cfg)


def gen_estimate(ctx: AppContext, measure: bool, set_name_, search_, limit_, n_, max_new_, request: gr.Request):
    """The sampling form's time estimate: measured on the button, from the calibration on a form change."""
    return sampling_estimate(ctx, ctx.owner(request), set_name_, search_, limit_, n_, max_new_, measure=measure)


def on_revise(
    ctx: AppContext, version_id, set_name_, rounds_, order_, start_, max_new_, temp, top_p_, request: gr.Request
):
    if not version_id:
        raise gr.Error("Pick a saved constitution version first.")
    ctx.constitution(version_id, request)
    cfg = ReviseConfig(
        constitution_id=int(version_id),
        set_name=set_name_ or "",
        rounds=int(rounds_ or 1),
        order=order_,
        start=start_,
        model=ctx.model_spec or "",
        owner=ctx.owner(request),
        sampling={"max_new_tokens": int(max_new_ or 0), "temperature": float(temp), "top_p": float(top_p_)},
        limit=ctx.caps.prompts if ctx.caps else 0,
    )
    ctx.limit(rounds=cfg.rounds, max_new_tokens=cfg.sampling["max_new_tokens"])
    if not ctx.store.count_samples(
        constitution_id=cfg.constitution_id, set_name=cfg.set_name or None, status="pending", owner=cfg.owner
    )["total"]:
        raise gr.Error("No pending samples for this version and set: start sampling first.")
    return submit(ctx, "revise", cfg)


def show_job(ctx: AppContext, job_id, request: gr.Request):
    return job_html(ctx.find_job(job_id, request))


def build(ctx: AppContext) -> None:
    ensure_default_prompts(ctx.store)
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    ctx.watch(on(set_lists), c["prompt_set"], [c["sets"], c["prompt_set"]], on=("sets",))
    ctx.watch(on(job_list), c["job"], c["job"], on=("jobs",))

    source = [c["upload"], c["dataset_path"]]
    read = [c["column"], c["split_column"], c["peek"], c["import_msg"]]
    c["upload"].change(on(on_source), source, read)
    c["dataset_path"].submit(on(on_source), source, read)
    c["upload"].upload(name_of_upload, c["upload"], c["set_name"])
    c["do_import"].click(
        on(on_import),
        [*source, *(c[k] for k in ("set_name", "column", "split_column", "heldout", "recipe"))],
        c["import_msg"],
    ).then(**ctx.poll_now)

    sampling = [
        c[k] for k in ("version", "prompt_set", "search", "limit", "n", "max_new", "temperature", "top_p", "batch")
    ]
    c["start_gen"].click(on(on_generate), sampling, c["job"]).then(**ctx.poll_now)
    gen_fields = [c[k] for k in ("prompt_set", "search", "limit", "n", "max_new")]
    c["gen_measure"].click(on(gen_estimate, True), gen_fields, c["gen_time"], concurrency_id=MODEL_QUEUE)
    for field in gen_fields:
        field.change(on(gen_estimate, False), gen_fields, c["gen_time"], queue=False)
    revising = [
        c[k] for k in ("version", "prompt_set", "rounds", "order", "start_from", "rev_max_new", "temperature", "top_p")
    ]
    c["start_rev"].click(on(on_revise), revising, c["job"]).then(**ctx.poll_now)

    ctx.watch(on(show_job), c["job"], c["status"], on=("jobs", "progress:generate", "progress:revise"))
    c["job"].change(on(show_job), c["job"], c["status"], show_progress="hidden")
    c["cancel"].click(on(on_stop, 10), c["job"], None).then(**ctx.poll_now)
    wire_job_buttons(ctx, c["job"], [c["start_gen"], c["start_rev"]], c["cancel"])
    c["resume"].click(on(on_resume), c["job"], None).then(**ctx.poll_now)
