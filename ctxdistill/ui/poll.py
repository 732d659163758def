"""One poll for the whole page. Tabs do not run timers of their own: they register what to refresh
with ``ctx.watch(fn, inputs, outputs, on=parts)``, and those callbacks run only when the store changed.

A single gr.Timer reads a small fingerprint of the visitor's store (versions, prompt sets, jobs
with their state and progress; each part its own gr.State, so that a job's progress re-renders
only what shows jobs) every ACTIVE_S while a job is queued or running, and every IDLE_S
otherwise, so that what another tab, browser or `ctxdistill` command did still shows up. When the
fingerprint is the same as last time, the tick returns nothing and no component is re-rendered.
Page load, switching tabs and the buttons that start or stop a job poll at once (``ctx.poll_now``).
"""

from __future__ import annotations

import gradio as gr

from ctxdistill import jobs
from ctxdistill.ui.common import AppContext

ACTIVE_S = 1.0
IDLE_S = 10.0


def fingerprint(ctx: AppContext, owner: str) -> dict:
    """What the tabs show from the store, by part (PARTS), in a form cheap to compare."""
    return {
        "versions": [(v["id"], v["message"]) for v in ctx.store.list_constitution_versions(owner=owner)],
        "sets": [(s["name"], s["n_train"], s["n_heldout"]) for s in ctx.store.prompt_sets(owner=owner)],
        "jobs": [(j["id"], j["state"], j["progress_done"], j["progress_total"], j["message"], j["error"])
                 for j in jobs.list_jobs(ctx.store, owner=owner, limit=50)],
    }


PARTS = ("versions", "sets", "jobs")


def active(jobs_part: list | None) -> bool:
    return any(j[1] in ("queued", "running") for j in jobs_part or [])


def setup(ctx: AppContext) -> None:
    """The page's stamps (one per part) and timer: made before the tabs, which poll after their own events."""
    ctx.stamps = {part: gr.State(None) for part in PARTS}
    ctx.timer = gr.Timer(IDLE_S)

    def tick(request: gr.Request, *old):
        new = fingerprint(ctx, ctx.owner(request))
        was = dict(zip(PARTS, old))
        changed = [new[part] if new[part] != was[part] else gr.skip() for part in PARTS]
        first = was["jobs"] is None
        timer = (gr.Timer(ACTIVE_S if active(new["jobs"]) else IDLE_S)
                 if first or active(new["jobs"]) != active(was["jobs"]) else gr.skip())
        return *changed, timer

    states = [ctx.stamps[part] for part in PARTS]
    ctx.poll_now = dict(fn=tick, inputs=states, outputs=[*states, ctx.timer], show_progress="hidden")


def wire(ctx: AppContext) -> None:
    """After the tabs: the timer, page load and tab switches poll; a changed part runs its watchers."""
    ctx.timer.tick(**ctx.poll_now)
    ctx.blocks.load(**ctx.poll_now)
    if ctx.tabs is not None:
        ctx.tabs.select(**ctx.poll_now)
    for fn, inputs, outputs, parts in ctx.watchers:
        for part in parts:
            ctx.stamps[part].change(fn, inputs, outputs, show_progress="hidden", queue=False)
