"""The web app: one Blocks with a tab per stage. Each tab module exposes ``build(ctx)``.

ctxdistill serve          # or: python app.py
"""

from __future__ import annotations

import importlib

import gradio as gr

from ctxdistill.ui import api, poll, space
from ctxdistill.ui.common import AppContext

# (tab title, module): each module's build(ctx) is called inside its tab, in this order.
TABS = [
    ("Constitution", "ctxdistill.ui.constitution"),
    ("Preview", "ctxdistill.ui.preview"),
    ("Data", "ctxdistill.ui.data"),
    ("Review", "ctxdistill.ui.samples"),
    ("Distill", "ctxdistill.ui.distill"),
    ("Compare", "ctxdistill.ui.compare"),
]

CSS = """
#divergence .textfield { line-height: 1.9; }
/* KL-coloured tokens read as text: no gaps between the pieces of a word ("fore" "caster") */
.kl-tokens .token.highlighted { margin: 0 !important; padding: 2px 0 !important; border-radius: 0 !important; }
.kbd { font-family: monospace; border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; }
.word-diff { white-space: pre-wrap; word-break: break-word; font-size: 0.9em; }
#diff del { background: #fdd; color: #900; }
#diff ins { background: #dfd; color: #060; }
.badge { display: inline-block; margin: 0 4px 2px 0; padding: 1px 8px; border-radius: 10px; background: #d4a017;
  color: #fff; font-size: 0.85em; }
"""


def build_app(ctx: AppContext | None = None) -> gr.Blocks:
    ctx = ctx or AppContext.from_env()
    with gr.Blocks(title="ctxdistill") as blocks:
        ctx.blocks = blocks
        ctx.draft = gr.State({})
        ctx.version = gr.State(None)
        gr.Markdown("# ctxdistill\nWrite a constitution, see what it changes, curate, and bake it into the weights.")
        space.build(ctx)
        poll.setup(ctx)
        with gr.Tabs() as ctx.tabs:
            for title, module in TABS:
                with gr.Tab(title, id=title.lower()):
                    importlib.import_module(module).build(ctx)
        poll.wire(ctx)
        api.build(ctx)
    return blocks


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    ctx = AppContext.from_env()
    blocks = build_app(ctx)
    blocks.queue(default_concurrency_limit=8)
    # gradio's queue looks for work every 1 ms and for progress every 10 ms even when it has none:
    # 8 % of a core of an idle app on a 2-core machine, taken from a training job. 20 ms and 100 ms
    # (its own values on Windows, nearly) cost a queued event at most 20 ms.
    blocks._queue.sleep_when_free, blocks._queue.progress_update_sleep_when_free = 0.02, 0.1
    blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        css=CSS,
        show_error=True,
        max_file_size=ctx.upload_bytes,
        allowed_paths=[],
        **ctx.server_options(),
    )
