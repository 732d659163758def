"""An id beyond SQLite's INTEGER (2^63 - 1), typed into a form or sent to the app's API, is refused
with a plain line, never `OverflowError: Python int too large to convert to SQLite INTEGER`."""

from types import SimpleNamespace

import pytest

from ctxdistill.store import NotFound, StoreError

HUGE = 2**70


def test_the_store_says_not_found_or_out_of_range(store):
    for read in (store.get_job, store.get_sample, store.get_constitution, store.get_eval):
        with pytest.raises(NotFound, match=f"{HUGE} not found"):
            read(HUGE)
    for write in (
        lambda: store.update_job(HUGE, state="done"),
        lambda: store.update_sample(HUGE, 1, status="accepted"),
        lambda: store.list_jobs(limit=HUGE),
    ):
        with pytest.raises(StoreError, match="out of range: ids and counts go up to 9223372036854775807"):
            write()


def test_the_demo_app_answers_a_huge_id_plainly(tmp_path):
    import gradio as gr

    from ctxdistill.ui.app import build_app
    from ctxdistill.ui.common import AppContext

    ctx = AppContext(home=tmp_path / "ws", demo=True)
    blocks = build_app(ctx)
    request = SimpleNamespace(session_hash="visitor", headers={}, cookies={}, client=None, query_params={})
    sample = next(f.fn for f in blocks.fns.values() if f.api_name == "sample")
    with pytest.raises(gr.Error) as caught:
        sample(HUGE, request)
    assert "OverflowError" not in str(caught.value.message) and "SQLite" not in str(caught.value.message)
    assert str(HUGE) in str(caught.value.message)
