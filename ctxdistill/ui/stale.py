"""The stale-run notice of the Distill and Compare tabs: a picked run was trained on an older version
of its constitution ("run 4 was trained on v3; v5 changed 2 principles", rebake.stale_notice), with
the offer to re-bake it, which fills the Distill form's version (the newest) and from-run fields,
opens the section that holds the latter (``ctx.rebake_form``, set by the Distill tab) and shows that tab.
"""

from __future__ import annotations

import functools

import gradio as gr

from ctxdistill import rebake
from ctxdistill.ui.common import AppContext, bind


def layout(prefix: str) -> dict:
    with gr.Row():
        note = gr.Markdown(elem_id=f"{prefix}-stale")
        button = gr.Button("Re-bake from this run", size="sm", visible=False, scale=0, elem_id=f"{prefix}-rebake")
    return dict(stale_note=note, stale_rebake=button)


def stale_runs(ctx: AppContext, run_ids, request: gr.Request) -> list[tuple[dict, str]]:
    """(run, notice) of the picked finished runs (one id or a list) whose constitution has a newer version."""
    ids = run_ids if isinstance(run_ids, list) else [run_ids] if run_ids else []
    picked = [
        job for r in ids if (job := ctx.find_job(r, request)) and job["kind"] == "train" and job["state"] == "done"
    ]
    return [(job, text) for job in picked if (text := rebake.stale_notice(ctx.store, job))]


def stale_view(ctx: AppContext, run_ids, request: gr.Request):
    stale = stale_runs(ctx, run_ids, request)
    return (
        "".join(f"**Stale:** {text}.  \n" for _, text in stale),
        gr.update(visible=bool(stale) and ctx.rebake_form is not None),
    )


def rebake_offer(ctx: AppContext, run_ids, request: gr.Request):
    """The Distill form's (version, from-run, its section open) for the first stale run picked: its
    constitution's newest version."""
    stale = stale_runs(ctx, run_ids, request)
    if not stale:
        raise gr.Error("None of the picked runs was trained on an older version of its constitution.")
    job = stale[0][0]
    return gr.update(value=rebake.latest_version(ctx.store, job)), job["id"], gr.Accordion(open=True)


def to_distill():
    return gr.Tabs(selected="distill")


def wire(ctx: AppContext, c: dict, runs) -> None:
    """The notice follows the picked runs (``runs``: one dropdown) and the store; the button fills the form."""
    on = functools.partial(bind, ctx)
    shown = [c["stale_note"], c["stale_rebake"]]
    runs.change(on(stale_view), runs, shown, show_progress="hidden")
    ctx.watch(on(stale_view), runs, shown, on=("versions", "jobs"))
    if ctx.rebake_form is not None:
        event = c["stale_rebake"].click(on(rebake_offer), runs, list(ctx.rebake_form))
        if ctx.tabs is not None:
            event.then(to_distill, None, ctx.tabs)
