"""Kill the app (SIGKILL) while users write through the API, restart: the store passes
PRAGMA integrity_check and holds every write a client saw acknowledged (bench/load.py, small N)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ on the path (the spawned user processes inherit it), so `load.user` pickles by name
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import load  # noqa: E402

pytestmark = pytest.mark.e2e


def test_acknowledged_writes_survive_a_kill(tmp_path):
    cid = load.seed_workspace(tmp_path, n_samples=20)
    out = tmp_path / "calls"
    out.mkdir()
    result = load.kill_test(tmp_path, cid, out, users=2, min_acked=10)
    assert result["integrity_ok"] and result["served_after_restart"]
    assert result["acknowledged"] > 0 and result["missing"] == 0
