"""Scoring the student: metric functions on toy numbers with known answers, an evaluation on the tiny
model with saved adapters, principle influence, bad inputs, votes and reports."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from ctxdistill import adapters, eval_config, evaluate, jobs, report, stats, summary
from ctxdistill.constitution import Check, Constitution, Principle
from ctxdistill.losses import kl_per_token
from ctxdistill.store import Store
from tests.conftest import save_version

PROMPTS = [
    "What is the capital of France?",
    "Write a poem about rain.",
    "def add(a, b):",
    "Is the sea wide?",
    "Say hello",
    "Write a short poem about the sun.",
]


# --------------------------------------------------------------------------- metrics (pure)


def test_kl_of_known_distributions():
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_per_token(p.log(), q.log()).item() == pytest.approx(expected, abs=1e-6)
    assert kl_per_token(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_token_weighted_kl_and_gap_closed_at_0_and_1():
    base = [[0.4, 0.2, 0.3], [0.1], [0.5, 0.5]]
    est = stats.token_kl(base)
    assert est["value"] == pytest.approx(2.0 / 6) and est["n"] == 3
    assert est["ci"][0] <= est["value"] <= est["ci"][1]
    same = stats.gap_closed_estimate(base, base)
    assert same["value"] == pytest.approx(0.0) and same["ci"] == pytest.approx([0.0, 0.0])
    perfect = stats.gap_closed_estimate([[0.0] * len(k) for k in base], base)
    assert perfect["value"] == pytest.approx(1.0) and perfect["ci"] == pytest.approx([1.0, 1.0])
    half = stats.gap_closed_estimate([[v / 2 for v in k] for k in base], base)
    assert half["value"] == pytest.approx(0.5)


def test_bootstrap_interval_covers_the_true_value():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        x = rng.normal(2.0, 1.0, size=64)
        lo, hi = stats.bootstrap_ci(stats._mean, x, n_boot=500, seed=trial)
        covered += lo <= 2.0 <= hi
        assert hi - lo < 1.0
    assert covered >= 34  # nominal 95%: 38 of 40; percentile intervals run a little short at n=64
    assert stats.estimate(stats._mean, [])["n"] == 0 and math.isnan(stats.bootstrap_ci(stats._mean, [])[0])


def test_retention_delta():
    base = [[1.0, 1.0], [2.0]]
    moved = [[1.5, 1.5], [2.5]]
    r = stats.retention(base, moved)
    assert r["nll_base"]["value"] == pytest.approx(4 / 3)
    assert r["delta"]["value"] == pytest.approx(0.5)
    assert r["delta"]["ci"] == pytest.approx([0.5, 0.5])


def test_checks_lengths_and_refusals():
    c = Constitution(
        "t", [Principle("arr", "Say Arr!", check=Check("starts_with", "Arr!")), Principle("free", "Be kind.")]
    )
    rates = stats.check_rates(c, {"base": ["Hello", "Arr! hi"], "teacher": ["Arr! yes", "Arr!"]})
    assert list(rates) == ["arr"]
    assert rates["arr"]["base"]["value"] == 0.5 and rates["arr"]["teacher"]["value"] == 1.0
    assert stats.is_refusal("I'm sorry, but I can't help with that.") and stats.is_refusal("I cannot assist with this")
    assert not stats.is_refusal("Paris is the capital of France.")
    summary = stats.text_summary(["one two three", "I cannot help with that request"], [3, 6])
    assert summary["words"]["value"] == 4.5 and summary["refusal"]["value"] == 0.5


def test_every_check_counts_answers_passing_all_checks_and_each_student_against_the_teacher():
    c = Constitution(
        "t",
        [
            Principle("arr", "Say Arr!", check=Check("starts_with", "Arr!")),
            Principle("matey", "Say matey.", check=Check("contains", "matey")),
            Principle("free", "Be kind."),
        ],
    )
    answers = {
        "base": ["Hello", "Arr! hi", "matey", "no"],
        "teacher": ["Arr! matey", "Arr! hi", "matey", "no"],  # 1 of 4 passes both
        "run 5": ["Arr! matey", "Arr! ye matey", "Arr! matey", "no"],  # 3 of 4
    }
    every = stats.every_check_rates(c, answers, ["run 5"])
    assert every["passed"]["base"]["value"] == 0.0 and every["passed"]["teacher"]["value"] == 0.25
    assert every["passed"]["run 5"]["value"] == 0.75
    # paired, prompt by prompt: (0 + 1 + 1 + 0) / 4
    assert every["vs_teacher"]["run 5"]["value"] == pytest.approx(0.5) and every["vs_teacher"]["run 5"]["n"] == 4
    results = {
        "scores": {"every_check": every},
        "runs": [{"label": "run 5", "lineage": "distilled run 3 → preference run 5"}],
    }
    line = report.checks_line(results, "run 5")
    assert line.startswith("run 5 (distilled run 3 → preference run 5): beyond the teacher: checks +50.0 points")
    assert "run 5 75%" in line and "teacher 25%" in line
    assert stats.every_check_rates(Constitution("t", [Principle("free", "Be kind.")]), answers, ["run 5"]) == {}
    assert report.checks_line({"scores": {}, "runs": []}, "run 5") == ""  # results from before the figure


def test_vote_tally_and_blind_sides():
    votes = [
        {"choice": "a", "a_is": "teacher"},
        {"choice": "b", "a_is": "teacher"},
        {"choice": "a", "a_is": "run 2"},
        {"choice": "tie", "a_is": "run 2"},
        {"choice": "both_bad", "a_is": "teacher"},
    ]
    tally = stats.vote_tally(votes)
    assert tally["counts"] == {"student": 2, "teacher": 1, "tie": 1, "both_bad": 1}
    assert tally["rates"]["student"]["value"] == pytest.approx(0.4)
    assert tally["rates"]["student_or_tie"]["value"] == pytest.approx(0.6)
    empty = stats.vote_tally([])
    assert empty["n"] == 0 and empty["counts"]["tie"] == 0
    sides = [stats.blind_sides(1, p, "") for p in range(200)]
    assert sides == [stats.blind_sides(1, p, "") for p in range(200)]
    assert 70 < sum(sides) < 130


# --------------------------------------------------------------------------- on the tiny model


def _adapter(tiny_model, path, scale: float, seed: int = 0, **info):
    """A LoRA adapter on the tiny model, saved as train.py saves one; scale 0 = an untrained adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale)
    adapters.save_adapter(model, path, {"quantize": "none", **info})


@pytest.fixture
def ws(workspace, tiny_checkpoint, tiny_model):
    """A workspace with the pirate constitution, a prompt set and two finished runs (adapters)."""

    store = Store(workspace)
    cid = save_version(store)
    store.add_prompts(
        "toy", [{"text": p, "split": "heldout"} for p in PROMPTS] + [{"text": "train me", "split": "train"}]
    )
    store.add_prompts("trainonly", [{"text": "only train", "split": "train"}])
    runs = []
    for scale in (0.0, 0.5):
        job = store.create_job(
            "train",
            {"model": str(tiny_checkpoint), "constitution_id": cid, "loss": "kl", "steps": 3, "quantize": "none"},
            heavy=True,
        )
        store.update_job(job, state="done")
        store.log_metrics(job, 1, {"loss": 0.5, "heldout_kl": 0.4})
        _adapter(tiny_model, store.runs_dir / str(job) / "adapter", scale)
        runs.append(job)
    yield store, cid, runs, str(tiny_checkpoint)
    store.close()


def _cfg(cid, runs, model, **kw):
    settings = dict(
        prompt_set="toy", sample_tokens=6, n_boot=200, influence_prompts=3, gen_batch=8, batch_size=4, robustness=False
    )
    return eval_config.EvalConfig(constitution_id=cid, runs=runs, model=model, **{**settings, **kw})


def test_evaluation_on_tiny_model_with_adapters(ws):
    store, cid, (untrained, trained), model = ws
    progress = []
    results = evaluate.run(
        _cfg(cid, [untrained, trained], model, judge=True),
        store,
        evaluate.Hooks(progress=lambda done, total, message: progress.append((done, total))),
    )
    assert progress[-1][0] == progress[-1][1] == len(PROMPTS) * (4 + 1 + 1) + 3
    assert all(done <= total for done, total in progress)
    s = results["scores"]
    assert results["conditions"] == ["base", "teacher", f"run {untrained}", f"run {trained}"]
    assert results["n_prompts"] == len(PROMPTS)
    assert s["kl"]["base"]["value"] > 0 and s["kl"]["base"]["n"] == len(PROMPTS)
    # an adapter whose B matrices are zero is the base model: it closes nothing, KL equal to the base's
    assert s["gap_closed"][f"run {untrained}"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert s["kl"][f"run {untrained}"]["value"] == pytest.approx(s["kl"]["base"]["value"], rel=1e-4)
    assert s["kl"][f"run {trained}"]["value"] != pytest.approx(s["kl"]["base"]["value"], rel=1e-3)
    assert s["retention"][f"run {untrained}"]["delta"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert s["retention"][f"run {trained}"]["delta"]["value"] != pytest.approx(0.0, abs=1e-4)
    assert set(s["checks"]) == {"arr", "matey", "voice"}
    assert set(s["checks"]["arr"]) >= {"base", "teacher", f"run {trained}"}
    # the same random stream per prompt: an untrained student samples exactly what the base samples
    assert all(p["answers"][f"run {untrained}"] == p["answers"]["base"] for p in results["prompts"])
    p0 = results["prompts"][0]
    assert len(p0["tokens"]) == len(p0["kl"]["base"]) == len(p0["kl"][f"run {trained}"])
    assert [r["principle"] for r in results["influence"]] and len(results["influence"]) == 4  # preamble + 3
    # which principles got baked, per student: every principle of the influence, checks side by side
    baked = results["baked"][f"run {trained}"]
    assert {r["principle"] for r in baked} == {r["principle"] for r in results["influence"]}
    assert all(0 <= r["value"] <= 1 or math.isnan(r["value"]) for r in baked)
    arr = next(r for r in baked if r["principle"] == "arr")
    assert arr["checks"]["student"] == s["checks"]["arr"][f"run {trained}"] and arr["n"] == 3
    assert results["runs"][0]["training"]["heldout_kl"] == [[1, 0.4]]
    judged = results["judge"]
    assert set(judged["adherence"]["arr"]) == set(results["conditions"]) and 0 <= judged["yes_rate"] <= 1
    assert judged["agreement_with_checks"]["n"] == 3 * len(results["conditions"]) * len(PROMPTS)
    head = summary.headline(results, f"run {trained}")
    assert {"kl_base", "kl_student", "gap_closed", "checks", "retention"} <= set(head)
    json.dumps(results)  # every number is plain JSON
    md, page = report.report(results, "md"), report.report(results, "html", stats.vote_tally([]))
    assert "data:image/png;base64," in md and "gap closed" in md and "No votes yet" in md
    assert f"Which principles got baked into run {trained}" in md
    assert "baked arr" in summary.card_section(results, f"run {trained}", 1)
    assert page.startswith("<!doctype html>") and "<img" in page
    assert json.loads(report.report(results, "json"))["scores"]["kl"]["base"]["n"] == len(PROMPTS)


def test_principle_influence_ranks_a_strong_principle_above_a_no_op(tiny_model, tiny_tokenizer):
    strong = (
        "Arr matey, the sea is wide and the ship is fast. What is the capital of France? Paris is the capital. "
        "Write a short poem about rain and the sun. def add(a, b): return a + b"
    ) * 2
    c = Constitution(
        "t", [Principle("noop", "."), Principle("strong", strong), Principle("kind", "Answer briefly and politely.")]
    )
    rows = evaluate.influence(tiny_model, tiny_tokenizer, c, PROMPTS[:4], sample_tokens=8, n_boot=100)
    order = [r["principle"] for r in rows]
    assert order[0] == "strong" and order[-1] == "noop"
    assert rows[0]["value"] > 3 * rows[-1]["value"]


def test_evaluate_job_stores_one_eval(ws):
    store, cid, (_, trained), model = ws
    job = store.create_job("evaluate", _cfg(cid, [trained], model, influence_prompts=0).to_dict(), heavy=True)
    jobs.run_inline(store, job)
    done = store.get_job(job)
    assert done["state"] == "done", done["error"]
    (ev,) = store.list_evals()
    assert done["result"]["eval_id"] == ev["id"] and ev["run_ids"] == [trained]
    assert ev["results"]["scores"]["gap_closed"][f"run {trained}"]["n"] == len(PROMPTS)
    assert (store.runs_dir / str(job) / "eval.json").is_file()
    card = adapters.export(store.runs_dir / str(trained) / "adapter", store.home / "exported") / "README.md"
    assert "## Evaluation (ctxdistill eval 1)" in card.read_text() and "KL gap closed" in card.read_text()


@pytest.mark.parametrize(
    "case",
    [
        "deleted adapter",
        "failed run",
        "corrupt run file",
        "other base model",
        "other architecture",
        "no held-out split",
        "no such run",
        "not a training run",
    ],
)
def test_bad_inputs_fail_clearly_and_store_nothing(ws, tiny_model, case):
    store, cid, (_, trained), model = ws
    kw = {}
    if case == "deleted adapter":
        import shutil

        shutil.rmtree(store.runs_dir / str(trained) / "adapter")
        message = "deleted"
    elif case == "failed run":
        import shutil

        shutil.rmtree(store.runs_dir / str(trained) / "adapter")
        store.update_job(trained, state="failed")
        message = "ended failed without an adapter"
    elif case == "corrupt run file":
        (store.runs_dir / str(trained) / "adapter" / adapters.RUN_FILE).write_text("{not json")
        message = "corrupt"
    elif case == "other base model":
        store.update_job(trained, config={**store.get_job(trained)["config"], "model": "HuggingFaceTB/SmolLM2-360M"})
        message = "another base model"
    elif case == "other architecture":
        from transformers import LlamaConfig, LlamaForCausalLM

        other = LlamaForCausalLM(LlamaConfig(**{**tiny_model.config.to_dict(), "hidden_size": 48, "head_dim": 12}))
        _adapter(other, store.runs_dir / str(trained) / "adapter", 0.1)
        message = "another base model"
    elif case == "no held-out split":
        kw["prompt_set"] = "trainonly"
        message = "no held-out prompts"
    elif case == "no such run":
        trained = 999
        message = "no run 999"
    else:
        trained = store.create_job("generate", {})
        message = "not a training run"
    cfg = _cfg(cid, [trained], model, influence_prompts=0)
    assert_refused(store, eval_config.EvalConfig(**{**cfg.to_dict(), **kw}), message)


def assert_refused(store, cfg, message: str) -> None:
    """The evaluation ``cfg`` is refused with ``message``, directly and as a job, and stores nothing."""
    with pytest.raises(eval_config.EvalError, match=message):
        evaluate.run(cfg, store)
    job = store.create_job("evaluate", cfg.to_dict(), heavy=True)
    jobs.run_inline(store, job)
    failed = store.get_job(job)
    assert failed["state"] == "failed" and message in failed["error"]
    assert store.list_evals() == []


def test_write_report_refuses_unknown_format(tmp_path):
    with pytest.raises(report.ReportError, match=r"\.md, \.html or \.json"):
        report.write_report({}, tmp_path / "r.pdf")


def test_cli_eval_prints_the_headline_and_refuses_bad_runs(ws, capsys, tmp_path):
    from ctxdistill import cli, foreground

    store, cid, (plain, trained), model = ws
    common = [
        "--workspace",
        str(store.home),
        "--constitution",
        str(cid),
        "--prompts",
        "toy",
        "--model",
        model,
        "--sample-tokens",
        "6",
        "--influence-prompts",
        "0",
        "--n-boot",
        "100",
    ]
    assert cli.main(["eval", *common, "--run", "999"]) == 2
    assert "no run 999" in capsys.readouterr().err
    both = ["--run", str(trained), "--run", str(plain)]
    assert cli.main(["eval", *common, *both, "--json", "--report", str(tmp_path / "r.md")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"kl_base", "kl_student", "gap_closed", "checks", "retention"} <= set(out)
    assert out["kl_base"] > 0 and set(out["checks"]["arr"]) == {"base", "teacher", f"run {trained}"}
    (other,) = out["other_runs"]  # every scored run has its own figures, not only the first
    assert other["run"] == f"run {plain}" and set(other["checks"]["arr"]) == {"base", "teacher", f"run {plain}"}
    lines = foreground.summary("evaluate", out).splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"eval {out['eval_id']} (run {trained},")
    assert lines[1].startswith(f"eval {out['eval_id']} (run {plain},")
    assert "## Scoreboard" in (tmp_path / "r.md").read_text()


def test_judge_reliability_against_checks():
    c = Constitution("t", [Principle("arr", "Say Arr!", check=Check("starts_with", "Arr!"))])
    answers = {"base": ["Hello", "Arr! hi", "Hi"], "teacher": ["Arr! yes", "Arr!", "no"]}
    perfect = {"base": {"arr": [0.1, 0.9, 0.2]}, "teacher": {"arr": [0.8, 0.7, 0.3]}}
    judged = evaluate.judge_report(c, answers, ["q"] * 3, perfect, 100)
    assert judged["agreement_with_checks"]["value"] == 1.0 and judged["auc_vs_checks"] == 1.0
    always_no = {"base": {"arr": [0.2] * 3}, "teacher": {"arr": [0.2] * 3}}
    judged = evaluate.judge_report(c, answers, ["q"] * 3, always_no, 100)
    assert judged["agreement_with_checks"]["value"] == pytest.approx(0.5) == judged["majority_baseline"]
    assert judged["auc_vs_checks"] == 0.5 and judged["yes_rate"] == 0.0
