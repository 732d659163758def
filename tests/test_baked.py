"""Which principles got baked (baked.py): the score on crafted distributions with known shares, and on
the tiny model a student that carries one principle and not another."""

import math

import pytest
import torch

from ctxdistill import engine, eval_config, evaluate, stats
from ctxdistill.baked import Carried, shares
from ctxdistill.constitution import Constitution, Principle, render
from ctxdistill.losses import kl_per_token
from ctxdistill.sampling import response_logits
from tests.test_evaluate import PROMPTS, ws  # noqa: F401 (a fixture)


def _score(teacher, ablated, student) -> float:
    num, den = shares(teacher, ablated, student)
    return float(num.sum() / den.sum())


def test_the_score_is_the_share_of_each_principles_effect_the_student_reproduces():
    torch.manual_seed(0)
    z = torch.randn(40, 60)
    effect_a, effect_b = torch.zeros(40, 60), torch.zeros(40, 60)
    effect_a[:, :5] = 2 * torch.randn(40, 5)
    effect_b[:, 10:15] = 6 * torch.randn(40, 5)  # b moves other tokens, and more strongly
    teacher, without_a, without_b = z + effect_a + effect_b, z + effect_b, z + effect_a
    only_a = z + effect_a  # a student that learnt a and never saw b
    assert _score(teacher, without_a, teacher) == pytest.approx(1.0)
    assert _score(teacher, without_a, without_a) == pytest.approx(0.0, abs=1e-6)
    # all of a (above 1 unclipped: the mass b would take goes partly to a's tokens), none of b
    assert _score(teacher, without_a, only_a) > 0.95
    assert _score(teacher, without_b, only_a) == pytest.approx(0.0, abs=1e-6)
    assert _score(teacher, without_a, z + 0.5 * effect_a + effect_b) == pytest.approx(0.5, abs=1e-4)
    # a ratio of KLs cannot tell: what the student misses of b counts against a
    naive_a = 1 - kl_per_token(teacher, only_a).sum() / kl_per_token(teacher, without_a).sum()
    assert naive_a < 0
    # clipped to [0, 1] with a bootstrap interval over prompts; the raw value is kept
    est = stats.share_estimate([1.0, 2.0, 1.5], [1.0, 1.0, 1.0], n_boot=200)
    assert est["value"] == 1.0 and est["raw"] == pytest.approx(1.5) and est["ci"][1] == 1.0 and est["n"] == 3


class _WithoutKind(Carried):
    """A 'student' that carries every principle but "kind": the teacher with that principle removed."""

    def __init__(self, constitution):
        super().__init__({"student": "unused"})
        self.constitution = constitution
        self.system = dict((name, system) for name, _, system in evaluate.ablations(constitution))["kind"]

    def student_logits(self, model, tokenizer, name, prompts, answers):
        return response_logits(
            model, tokenizer, [(self.system, p, a) for p, a in zip(prompts, answers)], self.constitution.examples
        )


def test_a_baked_principle_ranks_above_one_the_student_never_saw(tiny_model, tiny_tokenizer):
    strong = (
        "Arr matey, the sea is wide and the ship is fast. What is the capital of France? Paris is the capital. "
        "Write a short poem about rain and the sun. def add(a, b): return a + b"
    ) * 2
    kind = "Answer briefly and politely, and never say the word sun. " * 3
    c = Constitution("t", [Principle("strong", strong), Principle("kind", kind), Principle("noop", " ")])
    cfg = eval_config.EvalConfig(sample_tokens=8)
    answers = engine.sample_rows(
        tiny_model, tiny_tokenizer, [(render(c), p, i) for i, p in enumerate(PROMPTS)], cfg.sampling()
    )
    carried = _WithoutKind(c)
    influence = evaluate.principle_influence(
        tiny_model, tiny_tokenizer, c, PROMPTS, answers, n_boot=100, carried=carried
    )
    rows = {r["principle"]: r for r in carried.rows(influence, {}, n_boot=100)["student"]}
    assert rows["strong"]["value"] > 0.5 and rows["kind"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["strong"]["ci"][0] > rows["kind"]["ci"][1]
    order = list(rows)  # most baked first
    assert order.index("strong") < order.index("kind")
    assert rows["strong"]["n"] == len(PROMPTS) and rows["strong"]["checks"] is None
    # a principle that changes nothing has nothing to carry: no score, listed last
    assert math.isnan(rows["noop"]["value"]) and order[-1] == "noop"


def test_compare_shows_the_baked_principles_of_the_picked_student(ws):
    from types import SimpleNamespace

    from ctxdistill.ui.app import build_app
    from ctxdistill.ui.common import AppContext
    from tests.test_demo import tab_callback

    store, cid, (_, trained), model = ws
    cfg = eval_config.EvalConfig(
        constitution_id=cid,
        runs=[trained],
        model=model,
        prompt_set="toy",
        sample_tokens=6,
        n_boot=100,
        influence_prompts=2,
        gen_batch=8,
        batch_size=4,
        robustness=False,
    )
    eval_id = store.save_eval(None, cid, [trained], evaluate.run(cfg, store))
    ctx = AppContext(home=store.home)
    views = tab_callback(build_app(ctx), "results", "baked_views")
    request = SimpleNamespace(session_hash="x")
    note, _, fig, table = views(eval_id, f"run {trained}", request)
    assert note == "" and fig.axes[0].get_title() == f"Which principles got baked into run {trained}"
    assert set(table["principle"]) == {"(preamble)", "arr", "matey", "voice"}
    checked = table.set_index("principle").loc["arr"]
    assert checked["check: teacher"].endswith("]") and checked["check: student"].endswith("]")
    note, _, fig, table = views(eval_id, "run 999", request)
    assert "principle influence" in note and fig is None and table is None


def test_the_live_gauge_gives_the_evaluations_score_along_the_held_out_answers(tiny_model, tiny_tokenizer):
    """baked.Gauge, fed by the held-out KL's forward passes, against the score computed from the three
    conditions' logits as the evaluation computes them."""
    import copy

    from ctxdistill import train
    from ctxdistill.baked import Gauge, ablations

    c = Constitution(
        "t", [Principle("pirate", "Arr matey, talk like a pirate. " * 3), Principle("brief", "Answer briefly.")]
    )
    model = train._setup_model(train.TrainConfig(lora_r=4, lora_alpha=8), copy.deepcopy(tiny_model), seed=0)
    with torch.no_grad():  # a student that is not the base model: every LoRA B made non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pair = engine.TeacherStudent(model, tiny_tokenizer, render(c), teacher_cache_mb=64)
    heldout = engine.sample_answers(pair, PROMPTS, train.TrainConfig(sample_tokens=6), seed=0)
    systems = {name: system for name, _, system in ablations(c)}
    gauge = Gauge(pair, systems, chunk=5)
    for _ in range(2):  # the second measurement starts from zero again
        engine.heldout_kl(pair, heldout, batch_size=3, observe=gauge.observe)
        live = gauge.values()
    prompts, answers = [ex.prompt for ex in heldout], [ex.answer for ex in heldout]
    logits = lambda system: response_logits(model, tiny_tokenizer, [(system, p, a) for p, a in zip(prompts, answers)])
    with engine.adapters_off(model):
        teacher = logits(render(c))
        without = {name: logits(system) for name, system in systems.items()}
    student = logits(None)
    assert set(live) == {"baked:pirate", "baked:brief"}
    for name in systems:
        num = sum(float(shares(t, a, s)[0].sum()) for t, a, s in zip(teacher, without[name], student))
        den = sum(float(shares(t, a, s)[1].sum()) for t, a, s in zip(teacher, without[name], student))
        assert live[f"baked:{name}"] == pytest.approx(num / den, rel=2e-3, abs=2e-4)


def test_which_principles_a_run_gauges():
    from ctxdistill.baked import tracked

    c = Constitution("t", [Principle("a", "A."), Principle("b", "B.")], preamble="Be a pirate.")
    assert tracked("auto", c) == [] and tracked("none", c) == [] and tracked("", c) == []
    assert tracked("auto", c, ["b", "(preamble)"]) == ["b", "(preamble)"]
    assert tracked("all", c) == ["(preamble)", "a", "b"] and tracked(" b , a", c) == ["b", "a"]
    with pytest.raises(
        ValueError, match=r"no principle 'zz' in this constitution \(1 unknown; its principles: \(preamble\), a, b"
    ):
        tracked("a,zz", c)
