"""The pairs view of the Review tab (ui/pairs.py), its handlers called as the page calls them."""

import json

import gradio as gr
import pytest

from ctxdistill.constitution import content_hash, from_dict
from ctxdistill.ui import pairs
from ctxdistill.ui.common import AppContext

CONTENT = {
    "name": "c",
    "principles": [{"id": "arr", "text": "Say Arr.", "check": {"kind": "contains", "value": "Arr"}}],
}


@pytest.fixture
def ctx(tmp_path):
    ctx = AppContext(home=tmp_path / "ws")
    cid = ctx.store.save_constitution("c", CONTENT, content_hash(from_dict(CONTENT)))
    ctx.store.add_pairs(
        [
            {"constitution_id": cid, "prompt": "p1", "chosen": "Arr one", "rejected": "one", "source": "checks"},
            {
                "constitution_id": cid,
                "prompt": "p2",
                "chosen": "two",
                "rejected": "Arr two",
                "source": "feedback",
                "label": 0.55,
            },
        ]
    )
    yield ctx, cid
    ctx.store.close()


def test_review_accept_flip_bulk_and_filters(ctx):
    ctx, cid = ctx
    ids, at, where, badge, prompt, chosen, rejected, msg = pairs.load_queue(ctx, None, cid, "pending", pairs.ANY, 0)
    assert (len(ids), prompt, chosen, rejected) == (2, "p1", "Arr one", "one")
    assert "checks" in badge and "pending 2" in msg
    assert pairs.load_queue(ctx, None, cid, "pending", "feedback", 0)[4] == "p2"
    assert pairs.load_queue(ctx, None, cid, "pending", pairs.ANY, 0.5)[0] == [ids[0]]  # 0.55 is a coin toss
    out = pairs.act(ctx, "accepted", None, ids, 0, cid, "pending", pairs.ANY, 0)
    assert out[1] == 1 and "accepted" in out[-1]
    flipped = pairs.act(ctx, "flip", None, ids, 1, cid, "pending", pairs.ANY, 0)
    assert "flipped" in flipped[-1]
    second = ctx.store.get_pair(ids[1])
    assert (second["chosen"], second["status"]) == ("Arr two", "accepted")
    pairs.on_bulk(ctx, None, "reject", cid, "all", pairs.ANY, 0)
    assert ctx.store.count_pairs(constitution_id=cid)["rejected"] == 2


def test_export_import_and_refusals(ctx, tmp_path):
    ctx, cid = ctx
    ctx.store.set_pairs_status([p["id"] for p in ctx.store.list_pairs()], "accepted")
    path = pairs.on_export(ctx, None, cid)
    assert len(open(path).read().splitlines()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(gr.Error, match="lacks the column"):
        pairs.on_import(ctx, None, cid, str(bad))
    with pytest.raises(gr.Error, match="beta must be a positive number"):
        pairs.on_train(ctx, None, cid, 1, 0, 10, 0, 0, True)
    with pytest.raises(gr.Error, match="anchor must be 0 or a positive number"):
        pairs.on_train(ctx, None, cid, 1, 0.1, 10, None, 0, True)  # an emptied box
    with pytest.raises(gr.Error, match="chosen nll must be 0 or a positive number"):
        pairs.on_train(ctx, None, cid, 1, 0.1, 10, 0, -1, True)
    with pytest.raises(gr.Error, match="run 9 not found"):
        pairs.on_train(ctx, None, cid, 9, 0.1, 10, 0, 0, True)
    with pytest.raises(gr.Error, match="threshold"):
        pairs.on_make(ctx, None, cid, 0, "auto", 0.6, 4, 0.25)
    with pytest.raises(gr.Error, match="instruction share must be in"):
        pairs.on_make(ctx, None, cid, 0, "auto", 0.1, 4, 1.5)
    assert ctx.store.count_pairs()["total"] == 2


def test_compare_lists_a_dpo_run_with_its_lineage(ctx):
    from ctxdistill.ui import compare

    ctx, _ = ctx
    job = ctx.store.create_job("dpo", {"from_run": 3, "beta": 0.1}, heavy=True)
    ctx.store.update_job(job, state="done")
    assert (f"job {job} · DPO from run 3 · beta 0.1", job) in compare._runs(ctx, "")


def test_the_job_line_follows_the_pairs_job_and_a_reload_finds_it(ctx, monkeypatch):
    """Starting a pairs job gives the view its id; the line then shows the job's progress, what it made
    once done (the AI feedback's agreement included), and a reload finds the newest pairs or DPO job."""
    from ctxdistill import jobs

    ctx, cid = ctx
    monkeypatch.setattr(jobs, "spawn_worker", lambda *a, **k: None)  # no worker: the job stays queued
    assert pairs.newest_job(ctx, None) is None and "No pairs job" in pairs.on_status(ctx, None, None, None)[0]
    job = pairs.on_make(ctx, None, cid, 0, "auto", 0.1, 2, 0.25)
    assert pairs.newest_job(ctx, None) == job
    ctx.store.update_job(job, state="running", message="judging pair 3 of 8", progress_done=3, progress_total=8)
    line, plot, shown = pairs.on_status(ctx, job, None, None)
    assert plot["visible"] is False  # a pairs job has no curves
    assert "judging pair 3 of 8" in line and "value='3' max='8'" in line
    agreement = {"value": 0.75, "ci": [0.5, 1.0], "n": 4}
    result = {"prompts": 2, "pairs": {"checks": 3, "feedback": 1}, "agreement_with_checks": agreement}
    ctx.store.update_job(job, state="done", result=result)
    line = pairs.on_status(ctx, job, shown, None)[0]
    assert "3 checks, 1 feedback" in line and "agreed with the checks on 75% of 4" in line
    other = ctx.store.create_job("dpo", {"from_run": 1})
    assert pairs.newest_job(ctx, None) == other
    for step in (1, 2):
        ctx.store.log_metrics(other, step, {"dpo_loss": 0.7 / step, "reward_margin": 0.1 * step, "accuracy": 0.5})
    ctx.store.log_metrics(other, 0, {"heldout_kl": 0.2})
    _, plot, shown = pairs.on_status(ctx, other, None, None)
    panels = [(ax.get_title(), sorted(line.get_label() for line in ax.get_lines())) for ax in plot["value"].axes]
    assert panels == [
        ("DPO loss and reward margin", ["DPO loss", "reward margin"]),
        ("Preference accuracy (margin > 0)", ["accuracy"]),
        ("KL to the teacher, nats/token", ["held-out KL"]),
    ]
    assert pairs.on_status(ctx, other, shown, None)[1] == gr.skip()  # nothing moved: not drawn again
    from ctxdistill.ui.common import on_resume

    ctx.store.update_job(other, state="cancelled")  # Stop, then Resume: the run continues from its checkpoint
    on_resume(ctx, other, None)
    assert ctx.store.get_job(other)["state"] == "queued" and "queued" in pairs.on_status(ctx, other, shown, None)[0]


def test_the_badge_says_how_a_pair_was_made():
    pair = {"status": "pending", "source": "checks", "label": 1.0, "confidence": 1.0}
    badge = pairs.badge_html({**pair, "meta": {"principles": ["arr"]}})
    assert "principle arr" in badge and "edited" not in badge
    assert "the other edited to pass the checks" in pairs.badge_html({**pair, "meta": {"edit": True}})
    asked = {**pair, "source": "instructions", "meta": {"instruction": "Sign off with cheers.", "kind": "end_with"}}
    assert "source: instructions" in pairs.badge_html(
        asked
    ) and "to follow the user&#x27;s instruction" in pairs.badge_html(asked)


def test_both_run_boxes_start_at_the_versions_newest_distilled_run(ctx):
    """The pairs' policy and the DPO start are filled with the picked version's newest finished run
    that has an adapter (the measured defaults use it for both); 0 (the teacher) where there is none."""
    ctx, cid = ctx
    assert pairs.distilled_run(ctx, None, cid) == (0, 0)
    made = {}
    for name, version in (("old", cid), ("new", cid), ("other", cid + 1)):
        made[name] = ctx.store.create_job("train", {"constitution_id": version}, heavy=True)
        ctx.store.update_job(made[name], state="done")
        (ctx.store.runs_dir / str(made[name]) / "adapter").mkdir(parents=True)
    ctx.store.update_job(ctx.store.create_job("train", {"constitution_id": cid}, heavy=True), state="failed")
    assert pairs.distilled_run(ctx, None, cid) == (made["new"], made["new"])
    assert pairs.distilled_run(ctx, None, cid + 1) == (made["other"], made["other"])
