"""Whether a baked behaviour holds, as the evaluation measures it: a user's own follow-ups and their
refusals, and on the tiny model the suite's checks under attack against the teacher's, what the
attack adds to the KL apart from the student's own gap, the second turn and the benign instructions,
in the results, the headline, the report and the model card."""

import json

import pytest

from ctxdistill import eval_config, evaluate, probes, report, summary
from tests.test_evaluate import _cfg, assert_refused, ws  # noqa: F401  (the evaluation's workspace fixture)


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_follow_ups_are_texts_or_user_turns(tmp_path):
    path = _write(tmp_path / "f.jsonl", [{"text": " Why? "}, {"role": "user", "content": "Say more."}])
    assert probes.load_follow_ups(path) == ["Why?", "Say more."]
    assert probes.load_follow_ups() == list(probes.FOLLOW_UPS)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "is empty"),
        ([{"role": "assistant", "content": "Sure."}], "role must be user, not 'assistant'"),
        ([{"text": "  "}], "missing or blank"),
        ([{"prompt": "Why?"}], "missing or blank"),
        (["[1, 2]"], "expected a JSON object"),
        (["{not json"], "not JSON"),
    ],
)
def test_bad_follow_up_sets_are_refused(tmp_path, rows, message):
    with pytest.raises(probes.RobustnessError, match=message):
        probes.load_follow_ups(_write(tmp_path / "f.jsonl", rows))


def test_a_huge_follow_up_set_is_refused_by_the_caps_table(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")  # the demo's caps: a few hundred rows
    many = _write(tmp_path / "many.jsonl", [{"text": f"Why {k}?"} for k in range(1_000)])
    with pytest.raises(probes.RobustnessError, match="a set may hold at most"):
        probes.load_follow_ups(many)
    with pytest.raises(probes.RobustnessError, match="cannot read the follow-up set"):
        probes.load_follow_ups(tmp_path / "missing.jsonl")


def _suite_cfg(cid, runs, model, **kw):
    settings = dict(
        robustness=True, influence_prompts=0, suite_prompts=4, attack_prompts=2, capability_items=2, benign_items=6
    )
    return _cfg(cid, runs, model, **{**settings, **kw})


@pytest.mark.parametrize(
    "rows, message",
    [([], "is empty"), ([{"role": "system", "content": "Be plain."}], "role must be user"), (None, "cannot read")],
)
def test_an_evaluation_refuses_bad_follow_ups_before_a_model_loads(ws, tmp_path, rows, message):
    store, cid, (_, trained), model = ws
    path = str(tmp_path / "missing.jsonl") if rows is None else _write(tmp_path / "f.jsonl", rows)
    assert_refused(store, _suite_cfg(cid, [trained], model, follow_ups=path), message)


def test_cli_eval_refuses_bad_follow_ups_in_one_line(ws, tmp_path, capsys):
    from ctxdistill import cli

    store, cid, (_, trained), model = ws
    bad = _write(tmp_path / "f.jsonl", [{"role": "assistant", "content": "Sure."}])
    args = ["eval", "--workspace", str(store.home), "--constitution", str(cid), "--prompt-set", "toy"]
    assert cli.main([*args, "--model", model, "--run", str(trained), "--follow-ups", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "role must be user" in err and len(err.splitlines()) == 1
    assert store.list_evals() == []


def test_the_hold_figures_on_the_tiny_model(ws, tmp_path):
    store, cid, (untrained, trained), model = ws
    follow_ups = ["Tell me more, please.", "And then?"]
    path = _write(tmp_path / "f.jsonl", [{"text": follow_ups[0]}, {"role": "user", "content": follow_ups[1]}])
    results = evaluate.run(_suite_cfg(cid, [untrained, trained], model, follow_ups=path), store)
    r = results["robustness"]
    a, b = f"run {untrained}", f"run {trained}"

    # the second turn uses the user's follow-ups
    st = r["second_turn"]
    assert st["follow_ups"] == follow_ups and {e["follow_up"] for e in st["examples"]} <= set(follow_ups)

    # benign instructions: every condition answers the same items; an untrained adapter is the base model
    # (one of each kind); "start with <word>" conflicts with pirate's "Arr!" opening: the constitution wins, apart
    ben = r["benign"]
    apart = [row for row in ben["items"] if row["conflicts_with"]]
    assert [(row["kind"], row["conflicts_with"]) for row in apart] == [("start_with", "arr")]
    assert ben["conflicting"]["n"] == 1 and ben["conflicting"]["principles"] == ["arr"]
    assert ben["conflicting"]["user_won"][b]["value"] == float(apart[0][b])
    assert ben["n_items"] == 5 and set(ben["followed"]) == {"base", "teacher", a, b}
    assert len(ben["kinds"]) == 5 and set(ben["by_kind"]) == set(ben["kinds"]) and "start_with" not in ben["kinds"]
    assert [row[a] for row in ben["items"]] == [row["base"] for row in ben["items"]]
    followed = lambda cond: sum(row[cond] for row in ben["items"] if not row["conflicts_with"]) / 5
    assert ben["followed"][b]["value"] == pytest.approx(followed(b))
    assert ben["vs_teacher"][b]["value"] == pytest.approx(followed(b) - followed("teacher"))

    # the two KL terms apart: what the attack adds = KL(T ‖ attacked x) - KL(T ‖ x), along the same answers
    inj = r["injection"]
    for lab in (a, b):
        added = inj["overall"][lab]["kl"]["value"] - inj["kl_clean"][lab]["value"]
        assert inj["kl_added"][lab]["value"] == pytest.approx(added, rel=1e-6, abs=1e-9)
        share = inj["kl_added"][lab]["value"] / inj["overall"]["teacher"]["kl"]["value"]
        assert inj["kl_added_share"][lab]["value"] == pytest.approx(share, rel=1e-6)
        lo, hi = inj["kl_added"][lab]["ci"]
        assert lo <= inj["kl_added"][lab]["value"] <= hi
    assert inj["kl_clean"][a]["value"] == pytest.approx(inj["kl_base"]["value"], rel=1e-4)  # untrained = base

    # checks under attack vs the teacher under attack, and what each loses
    over = inj["overall"]
    assert inj["vs_teacher"][b]["value"] == pytest.approx(
        over[b]["attacked"]["value"] - over["teacher"]["attacked"]["value"]
    )
    assert over[b]["drop"]["value"] == pytest.approx(over[b]["clean"]["value"] - over[b]["attacked"]["value"])

    # where the figures appear
    hold = summary.headline(results, b)["hold"]
    assert hold["attacked_vs_teacher"] == inj["vs_teacher"][b] and hold["kl_added"] == inj["kl_added"][b]
    assert (
        hold["second_turn_gap_closed"] == st["gap_closed"][b]
        and hold["benign"]["teacher"] == ben["followed"]["teacher"]
    )
    # the relative second-turn figure is read from a KL of its own, shown beside the first turn's
    left = hold["second_turn_kl_shared"]
    assert hold["second_turn_gap_closed_shared"]["value"] == pytest.approx(
        1 - left[b]["value"] / left["base"]["value"], rel=1e-6
    )
    assert hold["first_turn_kl"]["base"] == results["scores"]["kl"]["base"]
    points = round(100 * inj["vs_teacher"][b]["value"])
    verdict = "better than" if points > 0 else "worse than" if points < 0 else "as well as"
    assert hold["line"].startswith(f"baked holds {verdict} prompted under override attempts: {points:+d} points")
    card = summary.card_section(results, b, 1)
    assert hold["line"] in card and "benign instructions followed" in card and "what the attack adds" in card
    assert "KL(teacher‖x) left" in card
    text = report.robustness_text(results)
    assert "Benign instructions followed" in text and "What the attack adds" in text and "Baked holds" in text
    assert "Counted apart: 1 instruction that no answer can follow without failing a check of arr" in text
    json.dumps(summary.headline(results, b))


def test_a_demo_caps_the_benign_instructions_and_old_results_still_show():
    cfg = eval_config.fit_suite(eval_config.EvalConfig(), 4)
    assert cfg.benign_items == 4
    old = {"robustness": {"injection": {"overall": {}}}, "runs": []}  # stored before the hold figures
    assert report.hold_line(old, "run 1") == "" and summary.hold_figures(old, "run 1") == {}
