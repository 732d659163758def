"""The pieces every tab shares (ui/common.py): module-level handlers bound to the app's context,
and download folders that do not pile up."""

from __future__ import annotations

import inspect
import os
import time

import gradio as gr
from gradio.helpers import special_args

from ctxdistill.ui import common


def answer(ctx, text: str, request: gr.Request, *rest):
    return ctx, text, request, rest


def stream(ctx, step: int, n: int):
    yield from (ctx * step * k for k in range(n))


def test_a_bound_handler_is_called_without_its_context_as_gradio_reads_it():
    fn = common.bind("ctx", answer)
    assert fn.__name__ == "answer" and fn.__module__ == __name__
    assert list(inspect.signature(fn).parameters) == ["text", "request", "rest"]
    assert inspect.unwrap(fn) is fn  # tests past the poll's memo call it without ctx
    request = gr.Request()
    args, *_ = special_args(fn, ["hi", 1], request)  # gradio fills the parameter annotated gr.Request
    assert fn(*args) == ("ctx", "hi", request, (1,))
    streamed = common.bind(2, stream, 5)  # ctx and a fixed first argument
    assert list(inspect.signature(streamed).parameters) == ["n"]
    assert inspect.isgeneratorfunction(streamed) and list(streamed(3)) == [0, 10, 20]


def test_download_folders_older_than_the_keep_time_are_removed(monkeypatch):
    first = common.download_dir()
    (first / "export.zip").write_text("x")
    second = common.download_dir()
    assert first.is_dir() and second.is_dir() and first.parent == second.parent
    old = time.time() - common.DOWNLOAD_KEEP_S - 1
    os.utime(first, (old, old))
    third = common.download_dir()
    assert not first.exists() and second.is_dir() and third.is_dir()


def failing(ctx, kind: str):
    if kind == "expected":
        raise gr.Error("push refused: Bearer hf_abcdefghij1234567890")
    raise RuntimeError("hub said 401 for hf_abcdefghij1234567890")


def failing_stream(ctx):
    yield "first"
    raise OSError("Authorization: hf_abcdefghij1234567890 rejected")


def test_whatever_a_handler_raises_reaches_the_page_without_a_token(capsys):
    import pytest

    for kind in ("expected", "unexpected"):
        with pytest.raises(gr.Error) as caught:
            common.bind("ctx", failing)(kind)
        assert "hf_abcdefghij" not in caught.value.message and "***" in caught.value.message
    assert "RuntimeError" in capsys.readouterr().err  # the traceback stays in the server's log
    stream_fn = common.bind("ctx", failing_stream)()
    assert next(stream_fn) == "first"
    with pytest.raises(gr.Error) as caught:
        next(stream_fn)
    assert caught.value.message == "Authorization: *** rejected"


def test_a_version_menu_follows_the_newest_version_until_the_visitor_picks_one(tmp_path):
    from ctxdistill.ui.common import AppContext

    ctx = AppContext(home=tmp_path / "ws")
    save = lambda name: ctx.store.save_constitution(name, {"name": name, "principles": ["p"]}, name, message="")
    v1, v2 = save("a"), save("b")
    fresh = common.version_list(ctx, v1, False, None)  # what the menu showed, never picked: a reload's v1
    assert fresh["value"] == v2 and [c[1] for c in fresh["choices"]] == [v2, v1]
    assert common.version_list(ctx, v1, True, None)["value"] == v1  # the visitor's pick stays
    v3 = save("c")
    assert common.version_list(ctx, v2, False, None)["value"] == v3
    assert common.version_list(ctx, 999, True, None)["value"] == v3  # a pick that is gone


def test_every_tab_writes_its_job_status_the_same_way():
    job = {
        "id": 7,
        "kind": "generate",
        "state": "running",
        "progress_done": 3,
        "progress_total": 12,
        "message": "<b>12/40</b> tokens",
        "error": None,
        "result": None,
        "config": {},
        "heartbeat": None,
        "pid": None,
    }
    text = common.job_status_html(job, "x-status", "nothing yet", "3/12", ("done <i>now</i>",))
    assert text.startswith("<div id='x-status'><progress value='3' max='12'")
    assert "<b>Job 7</b> · generate · <span class='job-state'>running</span> · 3/12" in text
    assert "&lt;b&gt;12/40&lt;/b&gt; tokens" in text and "done <i>now</i>" in text
    assert common.job_status_html(None, "x-status", "nothing yet") == "<div id='x-status'>nothing yet</div>"
    failed = common.job_status_html({**job, "state": "failed", "error": "<oom>"}, "x-status", "")
    assert "&lt;oom&gt;" in failed and "tokens" not in failed  # a stopped job shows its error, not its progress


def test_stop_is_live_only_while_the_shown_job_runs_and_start_only_when_it_does_not(tmp_path):
    from ctxdistill.ui.common import AppContext

    ctx = AppContext(home=tmp_path / "ws")
    job = ctx.store.create_job("generate", {})
    state = lambda *buttons: [(b["interactive"], b.get("variant")) for b in buttons]
    assert state(*common.job_buttons(ctx, 2, None, None)) == [(True, None), (True, None), (False, "secondary")]
    ctx.store.update_job(job, state="running")
    assert state(*common.job_buttons(ctx, 1, job, None)) == [(False, None), (True, "stop")]
    ctx.store.update_job(job, state="done")
    assert state(*common.job_buttons(ctx, 1, job, None)) == [(True, None), (False, "secondary")]
    assert state(common.job_buttons(ctx, 0, job, None)) == [(False, "secondary")]  # a Stop alone: one update
