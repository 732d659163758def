"""The Preview tab's form (ui/preview.py), without a browser."""

from __future__ import annotations

from ctxdistill.ui import preview
from ctxdistill.ui.common import AppContext


def test_an_empty_prompt_gets_one_message_where_the_answers_go(tmp_path):
    ctx = AppContext(home=tmp_path / "ws")
    for text in ("", "   \n"):
        # no gr.Error (it marked each of the four outputs "Error", the reason only in a toast), no model load
        assert list(preview.single(ctx, {}, text, None, 1.0, None, True, 0.7, 0.95, 0, 8, 1)) == [
            ("", "", "", [], preview.EMPTY_PROMPT)
        ]


def test_temperature_and_top_p_are_inactive_when_greedy():
    assert [s.interactive for s in preview.sampling_active(True)] == [False, False]
    assert [s.interactive for s in preview.sampling_active(False)] == [True, True]
