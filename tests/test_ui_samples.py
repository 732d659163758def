"""The Review tab's texts (ui/samples.py), without a browser."""

from __future__ import annotations

from ctxdistill.ui import samples


def test_an_empty_status_filter_says_so_beside_counters_of_the_whole_selection():
    pending = (3, "(any)", "pending", "(any)", "(any)", "", 0, 0)
    assert samples.empty_text(pending).startswith("No pending samples in this selection")
    assert samples.empty_text((3, "(any)", "all", "(any)", "(any)", "", 0, 0)) == "No samples match these filters."
    assert samples.empty_text((None, "(any)", "all", "(any)", "(any)", "", 0, 0)) == "Pick a constitution version."
