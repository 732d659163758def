"""The banner above the tabs in demo mode (a public Space): what is private, the caps, where to
go for longer runs, and whether the model can be had at all, said at once instead of a
preview that hangs."""

from __future__ import annotations

import gradio as gr

from ctxdistill import demo
from ctxdistill.models import availability
from ctxdistill.ui.common import AppContext


def banner_text(ctx: AppContext) -> str:
    caps = ctx.caps or demo.DemoCaps()
    url = demo.duplicate_url()
    duplicate = (
        f"[**Duplicate this Space**]({url})" if url else "**Duplicate this Space**"
    ) + " (or run it locally: `make run`) for bigger prompt sets, longer training and your own GPU."
    lines = [
        "**Public demo.** What you make here is visible to this browser only (a signed cookie), and is lost "
        "when the Space restarts.",
        f"Limits: {caps.summary()}. {duplicate}",
    ]
    problem = availability(ctx.model_spec)
    if problem:
        lines.append(f"⚠️ {problem}")
    return "\n\n".join(lines)


def build(ctx: AppContext) -> None:
    """Only in demo mode; the model check runs at each page load, so it tells how things are now."""
    if not ctx.demo:
        return
    banner = gr.Markdown(banner_text(ctx), elem_id="demo-banner")
    ctx.blocks.load(lambda: banner_text(ctx), None, banner, show_progress="hidden")
