"""One poll for the whole page. Tabs do not run timers of their own: they register what to refresh
with ``ctx.watch(fn, inputs, outputs, on=parts)``, and those callbacks run only when their part of
the store changed, and send only the outputs whose value changed.

The parts (PARTS) are a small fingerprint of the visitor's store: the saved versions, the prompt
sets, the list of jobs with their states, and the jobs' progress, by kind. Each is a gr.State of its own, so a
job's progress re-renders its status line and not every list that names jobs. The page's one
gr.Timer ticks every ACTIVE_S while a job is queued or running and is off otherwise: an idle page
makes no requests. Page load, switching tabs and the buttons that save a version or start, stop or
resume a job poll at once (``.then(**ctx.poll_now)``), so what another tab, browser or `ctxdistill`
command did shows up on the next tab switch, and a job started anywhere turns the timer on then.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import gradio as gr
import pandas as pd

from ctxdistill import jobs
from ctxdistill.ui.common import AppContext

ACTIVE_S = 1.0
# a job's progress is a part per kind: a training step re-renders the Distill tab's status, not the
# Data tab's (each tab watches the kinds it shows)
PROGRESS_KINDS = ("generate", "revise", "train", "evaluate", "prefs", "dpo")
PARTS = ("versions", "sets", "jobs", *(f"progress:{kind}" for kind in PROGRESS_KINDS))
_MEMO_SESSIONS = 1000  # per-session memory of what each watcher last sent


def fingerprint(ctx: AppContext, owner: str) -> dict:
    """What the tabs show from the store, by part, in a form cheap to compare."""
    rows = jobs.list_jobs(ctx.store, owner=owner, limit=50)
    return {
        "versions": [(v["id"], v["message"]) for v in ctx.store.list_constitution_versions(owner=owner)],
        "sets": [(s["name"], s["n_train"], s["n_heldout"]) for s in ctx.store.prompt_sets(owner=owner)],
        "jobs": [(j["id"], j["kind"], j["state"]) for j in rows],
        **{
            f"progress:{kind}": [
                (
                    j["id"],
                    j["progress_done"],
                    j["progress_total"],
                    j["message"],
                    j["error"],
                    jobs.starved(j) is not None,
                )
                for j in rows
                if j["kind"] == kind
            ]
            for kind in PROGRESS_KINDS
        },
    }


def active(jobs_part: list | None) -> bool:
    return any(state in ("queued", "running") for _, _, state in jobs_part or [])


def setup(ctx: AppContext) -> None:
    """The page's stamps and timer: made before the tabs, which poll after their own events."""
    ctx.stamps = {part: gr.State(None) for part in PARTS}
    ctx.timer = gr.Timer(ACTIVE_S, active=False)

    def tick(request: gr.Request, *old):
        new = fingerprint(ctx, ctx.owner(request))
        was = dict(zip(PARTS, old))
        changed = [new[part] if new[part] != was[part] else gr.skip() for part in PARTS]
        running = active(new["jobs"])
        timer = gr.Timer(active=running) if was["jobs"] is None or running != active(was["jobs"]) else gr.skip()
        return *changed, timer

    states = [ctx.stamps[part] for part in PARTS]
    # queued (gradio reports a State's change to the page only from queued events)
    ctx.poll_now = dict(fn=tick, inputs=states, outputs=[*states, ctx.timer], show_progress="hidden")


def wire(ctx: AppContext) -> None:
    """After the tabs: the timer, page load and tab switches poll; a changed part runs its watchers."""
    ctx.timer.tick(**ctx.poll_now)
    ctx.blocks.load(**ctx.poll_now)
    if ctx.tabs is not None:
        ctx.tabs.select(**ctx.poll_now)
    for fn, inputs, outputs, parts, every in ctx.watchers:
        sends = fn if every else only_changed(fn, len(outputs) if isinstance(outputs, (list, tuple)) else 1)
        for part in parts:
            ctx.stamps[part].change(sends, inputs, outputs, show_progress="hidden", queue=False)


def _key(value) -> str:
    if isinstance(value, pd.DataFrame):
        return "frame:" + value.to_json()
    if isinstance(value, dict):
        return repr(sorted((k, _key(v)) for k, v in value.items()))
    return repr(value)


def only_changed(fn, n_outputs: int):
    """fn, returning gr.skip() for each output whose value is what this session was last sent."""
    memo: OrderedDict = OrderedDict()

    @functools.wraps(fn)  # gradio reads fn's signature and annotations: it passes gr.Request as to fn
    def run(*args, **kwargs):
        values = fn(*args, **kwargs)
        values = list(values) if n_outputs > 1 else [values]
        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        session = getattr(request, "session_hash", None)
        keys = [None if isinstance(v, dict) and v == gr.skip() else _key(v) for v in values]
        last = memo.pop(session, [None] * len(values))
        memo[session] = [k if k is not None else old for k, old in zip(keys, last)]
        while len(memo) > _MEMO_SESSIONS:
            memo.popitem(last=False)
        out = [gr.skip() if k is not None and k == old else v for v, k, old in zip(values, keys, last)]
        return tuple(out) if n_outputs > 1 else out[0]

    return run
