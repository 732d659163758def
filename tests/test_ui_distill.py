"""The Distill form offers the curation (ui/curated.py): with accepted samples for the picked version
the run trains on them by default, and the form says how many."""

from __future__ import annotations

from ctxdistill import constitution as cmod
from ctxdistill.ui import curated
from ctxdistill.ui.common import AppContext


def test_the_form_offers_the_accepted_samples_of_the_version(tmp_path):
    ctx = AppContext(home=tmp_path / "ws")
    c = cmod.parse("name: haiku\nprinciples:\n  - Answer in three short lines.\n")
    v1 = ctx.store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c))
    v2 = ctx.store.save_constitution("other", {"name": "other", "principles": ["Be brief."]}, "h2")
    ctx.store.add_prompts("s", [{"text": f"Question {i}?"} for i in range(4)])
    for i, p in enumerate(ctx.store.get_prompts("s")):
        sid = ctx.store.upsert_sample(p["id"], v1, 0, prompted=f"answer {i}", unprompted="plain")
        if i < 3:
            ctx.store.update_sample(sid, ctx.store.get_sample(sid)["version"], status="accepted")
    note, data = curated.offer(ctx, v1, None, None)
    assert data == "accepted" and "has 3 accepted samples" in note
    note, data = curated.offer(ctx, v2, None, None)
    assert data == "prompts" and "no accepted samples" in note
    run = ctx.store.create_job("train", {"constitution_id": v1, "data": "prompts"})
    note, data = curated.offer(ctx, v1, run, None)  # the picked run's own settings stay in the form
    assert data == {"__type__": "update"} and "3 accepted" in note
    assert curated.offer(ctx, None, None, None)[0] == ""


def test_shares_have_their_own_plot_shown_only_for_a_run_that_tracks_them(tmp_path):
    from ctxdistill.ui import distill

    ctx = AppContext(home=tmp_path / "ws")
    fresh = ctx.store.create_job("train", {"constitution_id": 1})
    ctx.store.log_metrics(fresh, 0, {"heldout_kl": 0.4, "loss": 1.0})
    frames = distill.metrics_frames(ctx, fresh)
    assert set(frames[1]["metric"]) == {"held-out KL"} and not len(frames[2])
    loss, heldout, gauges = distill.plot_updates(frames)
    assert gauges["visible"] is False and gauges["value"] is None
    assert [line.get_label() for line in heldout.axes[0].get_lines()] == ["held-out KL"]
    gauged = ctx.store.create_job("train", {"constitution_id": 1})
    ctx.store.log_metrics(gauged, 0, {"heldout_kl": 0.4, "baked:matey": 0.2, "capability": 0.5})
    ctx.store.log_metrics(gauged, 5, {"heldout_kl": 0.3, "baked:matey": 0.4, "capability": 0.6})
    _, heldout, gauges = distill.plot_updates(distill.metrics_frames(ctx, gauged))
    assert gauges["visible"] is True
    lines = {line.get_label(): list(line.get_ydata()) for line in gauges["value"].axes[0].get_lines()}
    assert lines == {"baked share: matey": [0.2, 0.4], "capability (student)": [0.5, 0.6]}
    assert gauges["value"].axes[0].get_ylim() == (0, 1.05)  # shares on an axis of their own


def test_augmented_shares_are_plotted_as_the_share_so_far_beside_the_gauges(tmp_path):
    from ctxdistill.ui import distill

    ctx = AppContext(home=tmp_path / "ws")
    run = ctx.store.create_job("train", {"constitution_id": 1, "loss": "kl"})
    for step, attacked in ((1, 1.0), (2, 0.0), (3, 0.5)):
        share = {"share_attacked": attacked, "share_on_policy": 0.0}
        ctx.store.log_metrics(run, step, {"loss": 0.5, "kl": 0.5, **share})
    loss, _, shares = distill.metrics_frames(ctx, run)
    assert set(loss["metric"]) == {"loss"}  # the KL term is the loss itself: one line
    assert set(shares["metric"]) == {"answers attacked so far"}  # on-policy is off: not drawn
    assert list(shares.sort_values("step")["value"]) == [1.0, 0.5, 0.5]
    ctx.store.log_metrics(run, 4, {"loss": 0.9, "kl": 0.4})  # --loss mix: the KL term is drawn too
    assert set(distill.metrics_frames(ctx, run)[0]["metric"]) == {"loss", "KL(teacher‖student)"}
