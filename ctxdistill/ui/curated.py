"""The Distill form's offer of the curation: when the picked constitution version has accepted
samples (the Review tab), the form says how many and trains on them by default (Data = accepted);
without any it says that the run samples fresh teacher answers. docs/distillation.md says why.
"""

from __future__ import annotations

import functools

import gradio as gr

from ctxdistill.ui.common import AppContext, bind


def layout() -> dict:
    return dict(curation=gr.Markdown(elem_id="train-curation"))


def accepted_count(ctx: AppContext, version_id, owner: str) -> int:
    """Accepted train samples of the version with a final text: what a run with data "accepted" trains on."""
    if not version_id:
        return 0
    samples = ctx.store.list_samples(constitution_id=int(version_id), status="accepted", split="train", owner=owner)
    return sum(1 for s in samples if s["final"].strip())


def offer(ctx: AppContext, version_id, run_id, request: gr.Request):
    """(note, Data) for the picked version: the accepted samples when there are some, else fresh prompts.
    Data stays as it is while the picked run (``run_id``) is of this version: the form shows its settings."""
    if not version_id:
        return "", gr.skip()
    n = accepted_count(ctx, version_id, ctx.owner(request))
    run = ctx.find_job(run_id, request) if run_id else None
    shows_run = run is not None and run["config"].get("constitution_id") == int(version_id)
    if not n:
        note = (
            f"v{int(version_id)} has no accepted samples: a run samples the teacher's answers to the prompt set "
            "(accept answers in the Review tab to train on your picks)."
        )
        return note, gr.skip() if shows_run else "prompts"
    note = (
        f"**v{int(version_id)} has {n} accepted sample{'s' if n != 1 else ''}** (your review): a run trains on "
        "them by default. Set Data to *prompts* to train on fresh teacher answers instead."
    )
    return note, gr.skip() if shows_run else "accepted"


def wire(ctx: AppContext, version, run, data, note) -> None:
    """The note and Data follow the picked version; the count is read again when the tab is shown."""
    on = functools.partial(bind, ctx)
    version.change(on(offer), [version, run], [note, data], show_progress="hidden")
    if ctx.tabs is not None:
        ctx.tabs.select(on(offer_note), [version, run], note, show_progress="hidden")


def offer_note(ctx: AppContext, version_id, run_id, request: gr.Request) -> str:
    """The note alone (the count after a review in another tab), Data left as the visitor set it. Before
    the menu has a version (a tab shown while the page still loads) it leaves the note: an answer to that
    early read must not blank the note the version's own change wrote."""
    return offer(ctx, version_id, run_id, request)[0] if version_id else gr.skip()
