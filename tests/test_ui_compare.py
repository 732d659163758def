"""The Compare tab's form (ui/compare.py) and results (ui/results.py), without a browser: the robustness
suite's size follows the form, the time is predicted before Start, and a run scored against another
version than it was trained on is named."""

from __future__ import annotations

import pytest

from ctxdistill import constitution as cmod
from ctxdistill import estimate, eval_config
from ctxdistill.prompts import ensure_default_prompts
from ctxdistill.ui import compare, results
from ctxdistill.ui.common import AppContext

TEXT = "name: haiku\nprinciples:\n  - Answer in three short lines.\n"


@pytest.fixture
def ctx(tmp_path):
    ctx = AppContext(home=tmp_path / "ws")
    c = cmod.parse(TEXT)
    ctx.version_id = ctx.store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c))
    ensure_default_prompts(ctx.store)
    return ctx


def suite(ctx, n=0, size="quick"):
    cfg = compare.form_config(ctx, ctx.version_id, [], "default", n, 16, 0, False, True, size, "")
    the_plan = eval_config.plan(cfg, ctx.store)
    return cfg, the_plan


def test_the_robustness_suite_follows_the_form(ctx):
    cfg, quick = suite(ctx)
    assert len(quick.capability) == compare.QUICK_SUITE and len(quick.benign) == compare.QUICK_SUITE
    assert cfg.suite_prompts == compare.QUICK_SUITE and cfg.attack_prompts == 1
    cfg, small = suite(ctx, n=4)  # Max prompts bounds every part (it was ignored)
    assert len(small.capability) == 4 and len(small.benign) == 4 and cfg.suite_prompts == 4
    _, full = suite(ctx, size="full")  # the whole suite, one click away
    assert len(full.capability) > 10 * len(quick.capability) and len(full.benign) > len(quick.benign)


def test_the_time_is_predicted_before_start_and_says_what_it_cannot(ctx, monkeypatch):
    form = (ctx.version_id, [], "default", 0, 16, 0, False, True, "quick")
    text = compare.eval_estimate(ctx, False, *form, request=None)
    assert f"{compare.QUICK_SUITE} capability items" in text and "press *Estimate the time*" in text
    assert "a few seconds" not in text
    cal = estimate.Calibration("fp32", load_s=2.0, step_s=1.0, score_s=0.5, decode_s=0.64, prefill_s=0.64)
    monkeypatch.setattr(estimate, "cached", lambda *a, **k: cal)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    quick = compare.eval_estimate(ctx, False, *form, request=None)
    full = compare.eval_estimate(ctx, False, *form[:-1], "full", request=None)
    seconds = lambda t: t.split("about ")[1].split(" (")[0]
    assert "Time on this machine" in quick and seconds(quick) != seconds(full)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (9.0, 8.0, 7.0))
    assert "machine is busy (load 9.0" in compare.eval_estimate(ctx, False, *form, request=None)


def test_a_run_scored_against_another_version_is_named_in_the_results():
    scored = {
        "constitution": {"id": 3},
        "runs": [{"label": "run 7", "constitution_id": 4}, {"label": "run 8", "constitution_id": 3}],
    }
    text = results.board_notes(scored)
    assert "run 7 was trained on v4" in text and "v3" in text and "run 8" not in text
    below = {"value": -0.25, "ci": [-0.5, 0.0], "n": 8}
    scored["scores"] = {
        "every_check": {
            "passed": {c: {"value": v, "ci": [v, v], "n": 8} for c, v in (("teacher", 0.5), ("run 8", 0.25))},
            "vs_teacher": {"run 8": below},
        }
    }
    assert "Run 8: below the teacher: checks -25.0 points [-50.0, +0.0]" in results.board_notes(scored)


def test_a_preference_run_is_told_what_to_change_next():
    est = lambda v: {"value": v, "ci": [v, v], "n": 40}
    scored = {
        "constitution": {"id": 3},
        "runs": [{"label": "run 5", "loss": "dpo"}, {"label": "run 4", "loss": "kl"}],
        "scores": {
            "every_check": {
                "passed": {"teacher": est(0.02), "run 5": est(0.05), "run 4": est(0.02)},
                "vs_teacher": {"run 5": est(0.03), "run 4": est(0.0)},
            }
        },
        "robustness": {
            "capability": {"accuracy": {"teacher": est(0.185), "run 5": est(0.092), "run 4": est(0.1)}},
            "benign": {"followed": {"teacher": est(0.35), "run 5": est(0.225), "run 4": est(0.2)}},
        },
    }
    text = results.board_notes(scored)
    assert "Run 5, next: its capability is 9 points under the teacher's: run DPO again with --chosen-nll 1" in text
    assert "12 points fewer benign instructions than the teacher: if its pairs had no user instructions" in text
    assert "make them again with --instruction-share 0.5" in text
    assert "raise --lr" not in text and "Run 4, next" not in text  # a distilled run gets no advice on DPO
    scored["robustness"]["capability"]["accuracy"]["run 5"] = est(0.2)
    scored["robustness"]["benign"]["followed"]["run 5"] = est(0.35)
    assert "Run 5, next: to go further beyond the teacher, raise --lr in steps" in results.board_notes(scored)
    scored["scores"]["every_check"]["vs_teacher"]["run 5"] = est(0.14)
    assert "next" not in results.board_notes(scored)  # every target met
    del scored["robustness"]
    assert "next" not in results.board_notes(scored)  # scored without the suite


def test_the_scoreboard_reads_words_with_one_decimal():
    from ctxdistill import report

    assert report.words({"value": 17.875, "ci": [15.0, 20.0]}) == "17.9"
    assert report.words(None) == report.words({"value": float("nan")}) == "–"


def test_a_run_of_another_version_is_named_before_the_evaluation_starts(ctx):
    from ctxdistill.adapters import run_adapter

    other = ctx.store.save_constitution("haiku", {"name": "haiku", "principles": ["Be brief."]}, "h-other")
    run = ctx.store.create_job("train", {"constitution_id": other, "loss": "kl"})
    ctx.store.update_job(run, state="done")
    adapter = run_adapter(ctx.store, run)
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # the plan only checks that it is there
    form = (ctx.version_id, [run], "default", 0, 16, 0, False, False, "quick")
    text = compare.eval_estimate(ctx, False, *form, request=None)
    assert f"run {run} was trained on v{other}" in text and f"teacher of v{ctx.version_id}" in text
    same = compare.eval_estimate(ctx, False, other, [run], *form[2:], request=None)
    assert "Other version" not in same
