"""DPO (dpo.py): the sigmoid loss by hand, the frozen reference, the loop on the tiny model, and the
refusals before a model loads."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from ctxdistill import dpo
from ctxdistill.engine import Example, TeacherStudent
from ctxdistill.train import Hooks


def test_dpo_loss_by_hand():
    out = dpo.dpo_loss(
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-1.5, -2.0]),
        0.5,
    )
    # pair 1: rewards 0.5*(-1+1.5)=0.25 and 0.5*(-2+1.5)=-0.25, margin 0.5; pair 2: -0.5 and 0.5, margin -1
    assert out["chosen_reward"].tolist() == pytest.approx([0.25, -0.5])
    assert out["rejected_reward"].tolist() == pytest.approx([-0.25, 0.5])
    assert out["loss"].tolist() == pytest.approx([math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0))])
    soft = dpo.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.5, 0.8
    )
    assert float(soft["loss"]) == pytest.approx(0.8 * math.log1p(math.exp(-0.5)) + 0.2 * math.log1p(math.exp(0.5)))


def test_dpo_loss_gradient_raises_chosen_lowers_rejected():
    chosen, rejected = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    dpo.dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)["loss"].sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(0.05)


@pytest.fixture
def student(tiny_model, tiny_tokenizer):
    """A peft copy of the tiny model whose adapter is not zero (a 'distilled' start)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(
        copy.deepcopy(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _pairs(tok):
    texts = [("Say hi", "Arr matey, the sea is wide", "Hello"), ("Name a city", "Paris is the capital", "Rain")]
    return dpo.encode_pairs(
        tok, [{"prompt": p, "chosen": c, "rejected": r, "label": 1.0} for p, c, r in texts], max_tokens=12
    )


def test_an_answer_ends_the_turn_unless_a_budget_cut_it(tiny_tokenizer):
    tok = tiny_tokenizer
    end = tok.convert_tokens_to_ids(tok.eos_token)
    words = {t: tok.encode(t, add_special_tokens=False) for t in ("Arr, the sea", "The sea is wide and deep")}
    pair = {"prompt": "p", "chosen": "Arr, the sea", "rejected": "The sea is wide and deep", "label": 1.0}
    (c, r, _), (c2, r2, _), (c3, _, _) = dpo.encode_pairs(
        tok, [pair, {**pair, "meta": {"unfinished": ["rejected"]}}, {**pair, "chosen": "Arr, the sea " * 9}], 40
    )
    assert (c.answer, r.answer) == (words["Arr, the sea"] + [end], words["The sea is wide and deep"] + [end])
    assert (c2.answer, r2.answer) == (words["Arr, the sea"] + [end], words["The sea is wide and deep"])
    assert len(c3.answer) == 40 and end not in c3.answer  # cut at max_tokens


def test_reference_is_the_start_adapter_and_stays_frozen(student, tiny_tokenizer, tmp_path):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    start = {k: v.clone() for k, v in get_peft_model_state_dict(student).items()}
    pair = TeacherStudent(student, tiny_tokenizer, "Talk like a pirate.")
    data = _pairs(tiny_tokenizer)
    heldout = [Example("Say hi", tiny_tokenizer.encode("Arr hello", add_special_tokens=False))]
    logged = []
    cfg = dpo.DPOConfig(from_run=1, steps=4, batch_size=2, lr=5e-2, eval_every=2, checkpoint_every=0)
    result = dpo.train_dpo(cfg, pair, data, heldout, tmp_path, Hooks(log=lambda v, s: logged.append((s, v))), {})
    kept = torch.tensor(json.loads((tmp_path / "reference.json").read_text())["logps"], dtype=torch.float64)
    trained = dpo.reference_logps(pair, data, 2)
    set_peft_model_state_dict(student, start)
    assert torch.allclose(dpo.reference_logps(pair, data, 2), kept, atol=1e-5)  # the start adapter's, computed once
    assert not torch.allclose(trained, kept, atol=1e-3)  # while the policy moved
    assert (trained[:, 0] - kept[:, 0]).mean() > (trained[:, 1] - kept[:, 1]).mean()  # toward the chosen answers
    # a resumed run reads the reference back instead of recomputing it from a trained adapter
    assert torch.equal(dpo.frozen_reference(pair, data, 2, tmp_path / "reference.json"), kept)
    names = {k for _, v in logged for k in v}
    assert {"dpo_loss", "reward_margin", "accuracy", "heldout_kl"} <= names
    assert [s for s, v in logged if "heldout_kl" in v] == [0, 2, 4]
    assert result["step"] == 4 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_stop_then_resume_continues_from_the_checkpoint(student, tiny_tokenizer, tmp_path):
    pair = TeacherStudent(student, tiny_tokenizer, "Talk like a pirate.")
    data = _pairs(tiny_tokenizer)
    cfg = dpo.DPOConfig(from_run=1, steps=4, batch_size=1, eval_every=0, checkpoint_every=0)
    steps = []
    hooks = Hooks(should_stop=lambda: len(steps) >= 2, log=lambda v, s: steps.append(s) if "dpo_loss" in v else None)
    assert dpo.train_dpo(cfg, pair, data, [], tmp_path, hooks, {}) == {"stopped": True, "step": 2}
    result = dpo.train_dpo(cfg, pair, data, [], tmp_path, Hooks(log=lambda v, s: steps.append(s)), {})
    assert result["step"] == 4 and 3 in steps and 1 in steps


def test_anchor_is_the_distillation_kl_beside_the_dpo_loss(student, tiny_tokenizer, tmp_path):
    """The anchor's gradient is ``anchor`` times that of the mean per-token KL(teacher || student) along
    the teacher's training answers, computed here from the full logits; a run with it logs that KL."""
    from ctxdistill.losses import kl_per_token

    pair = TeacherStudent(student, tiny_tokenizer, "Talk like a pirate.")
    rows = [Example(p, tiny_tokenizer.encode(a, add_special_tokens=False)) for p, a in [("Say hi", "Arr hi there")] * 3]
    cfg = dpo.DPOConfig(from_run=1, batch_size=2, anchor=0.5)
    params = [p for p in student.parameters() if p.requires_grad]
    kl = dpo.anchor_step(pair, cfg, rows, step=0)
    got = [p.grad.clone() for p in params]
    student.zero_grad(set_to_none=True)
    hs, ht, _ = pair.hidden(rows[:2], with_teacher=True)
    by_hand = kl_per_token(pair.lm_head(ht).float(), pair.lm_head(hs).float()).mean()
    (0.5 * by_hand).backward()
    assert kl == pytest.approx(float(by_hand.detach()), rel=1e-4)
    for a, b in zip(got, [p.grad for p in params]):
        assert torch.allclose(a, b, atol=1e-6)
    student.zero_grad(set_to_none=True)
    logged = []
    run = dpo.DPOConfig(from_run=1, steps=2, batch_size=2, eval_every=0, checkpoint_every=0, anchor=1.0)
    dpo.train_dpo(run, pair, _pairs(tiny_tokenizer), [], tmp_path, Hooks(log=lambda v, s: logged.append(v)), {}, rows)
    assert all(math.isfinite(v["anchor_kl"]) for v in logged if "dpo_loss" in v)


def test_chosen_nll_is_the_chosen_answers_loss_per_token_beside_the_dpo_loss(student, tiny_tokenizer, tmp_path):
    """With ``chosen_nll`` a step adds that weight times the chosen answers' mean negative log-likelihood per
    token (RPO); the first step logs it as computed by hand on the start adapter, and 0 logs nothing."""
    pair = TeacherStudent(student, tiny_tokenizer, "Talk like a pirate.")
    data = _pairs(tiny_tokenizer)
    with torch.no_grad():
        logps = torch.stack([part.sum() for part in dpo.token_logps(pair, [c for c, _, _ in data])])
    by_hand = float((-logps / torch.tensor([float(len(c.answer)) for c, _, _ in data])).mean())
    for weight in (0.0, 2.0):
        logged = []
        run = dpo.DPOConfig(from_run=1, steps=1, batch_size=2, eval_every=0, checkpoint_every=0, chosen_nll=weight)
        (tmp_path / str(weight)).mkdir()
        dpo.train_dpo(run, pair, data, [], tmp_path / str(weight), Hooks(log=lambda v, s: logged.append(v)), {})
        step = next(v for v in logged if "dpo_loss" in v)
        assert step.get("chosen_nll") == (pytest.approx(by_hand, rel=1e-4) if weight else None)
    with pytest.raises(dpo.DPOError, match="chosen nll must be 0 or a positive number"):
        dpo.DPOConfig(from_run=1, chosen_nll=float("nan")).validate()


def _finished_run(store, config: dict, shape: dict | None = None) -> int:
    job = store.create_job("train", config, heavy=True)
    store.update_job(job, state="done")
    adapter = store.runs_dir / str(job) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(shape or {"r": 16, "lora_alpha": 32}))
    return job


def test_refusals_before_a_model_loads(store):
    from ctxdistill.constitution import content_hash, from_dict

    content = {"name": "c", "principles": [{"id": "a", "text": "Be brief."}]}
    cid = store.save_constitution("c", content, content_hash(from_dict(content)))
    for beta in (0, -1, float("nan"), float("inf")):
        with pytest.raises(dpo.DPOError, match="beta must be a positive number"):
            dpo.check_start(store, dpo.DPOConfig(from_run=1, beta=beta))
    for anchor in (-0.5, float("nan"), float("inf")):
        with pytest.raises(dpo.DPOError, match="anchor must be 0 or a positive number"):
            dpo.check_start(store, dpo.DPOConfig(from_run=1, anchor=anchor))
    with pytest.raises(dpo.DPOError, match="run 5 not found"):
        dpo.check_start(store, dpo.DPOConfig(from_run=5))
    run = _finished_run(store, {"constitution_id": cid, "model": "", "lora_r": 16, "lora_alpha": 32})
    with pytest.raises(dpo.DPOError, match="no accepted pairs"):
        dpo.check_start(store, dpo.DPOConfig(from_run=run))
    with pytest.raises(dpo.DPOError, match="another base model"):
        dpo.check_start(store, dpo.DPOConfig(from_run=run, model="gpt2"))
    odd = _finished_run(store, {"constitution_id": cid, "lora_r": 16, "lora_alpha": 32}, {"r": 8, "lora_alpha": 16})
    with pytest.raises(dpo.DPOError, match="another LoRA shape"):
        dpo.check_start(store, dpo.DPOConfig(from_run=odd))
    store.add_pairs([{"constitution_id": cid, "prompt": "p", "chosen": "a", "rejected": "b", "source": "checks"}])
    store.set_pairs_status([store.list_pairs()[0]["id"]], "accepted")
    job, pairs = dpo.check_start(store, dpo.DPOConfig(from_run=run))
    assert job["id"] == run and len(pairs) == 1


def test_demo_caps_steps_and_pairs(store, monkeypatch):
    from ctxdistill.constitution import content_hash, from_dict

    content = {"name": "c", "principles": [{"id": "a", "text": "Be brief."}]}
    cid = store.save_constitution("c", content, content_hash(from_dict(content)))
    run = _finished_run(store, {"constitution_id": cid, "lora_r": 16, "lora_alpha": 32})
    store.add_pairs([{"constitution_id": cid, "prompt": "p", "chosen": "a", "rejected": "b", "source": "checks"}])
    store.set_pairs_status([store.list_pairs()[0]["id"]], "accepted")
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    with pytest.raises(dpo.DPOError, match="steps 500 > 40"):
        dpo.check_start(store, dpo.DPOConfig(from_run=run, steps=500))


def test_a_run_from_a_finished_run(store, student, tiny_checkpoint, tiny_tokenizer):
    from ctxdistill.adapters import export_run, save_adapter
    from ctxdistill.constitution import content_hash, from_dict

    content = {"name": "c", "principles": [{"id": "a", "text": "Talk like a pirate."}]}
    cid = store.save_constitution("c", content, content_hash(from_dict(content)))
    config = {"constitution_id": cid, "model": str(tiny_checkpoint), "quantize": "none", "precision": "fp32"}
    run = store.create_job("train", {**config, "lora_r": 4, "lora_alpha": 8}, heavy=True)
    save_adapter(student, store.runs_dir / str(run) / "adapter", {})
    heldout = {"prompt": "Say hi", "answer": tiny_tokenizer.encode("Arr hello", add_special_tokens=False)}
    (store.runs_dir / str(run) / "data.json").write_text(json.dumps({"train": [heldout], "heldout": [heldout]}))
    store.update_job(run, state="done")
    store.add_pairs(
        [
            {
                "constitution_id": cid,
                "prompt": "Say hi",
                "chosen": "Arr matey",
                "rejected": "Hello",
                "source": "checks",
            },
            {
                "constitution_id": cid,
                "prompt": "Name a city",
                "chosen": "Paris",
                "rejected": "Rain",
                "source": "import",
            },
        ]
    )
    store.set_pairs_status([p["id"] for p in store.list_pairs()], "accepted")
    cfg = dpo.DPOConfig(from_run=run, steps=2, batch_size=2, eval_every=1, anchor=1.0)
    job = store.create_job("dpo", cfg.to_dict(), heavy=True)
    logged = []
    result = dpo.run(cfg, store, store.run_dir(job), Hooks(log=lambda v, s: logged.append(v)))
    assert [v["anchor_kl"] >= 0 for v in logged if "dpo_loss" in v] == [True, True]  # along the start run's answers
    # a preference run's kept answers are those of the distilled run it started from
    assert dpo.start_data(store, store.get_job(job))["train"] == [heldout]
    assert result["lineage"]["text"] == f"distilled run {run} → preference run {job}"
    assert result["n_train"] == 2 and result["pair_sources"] == ["checks", "import"]
    assert math.isfinite(result["heldout_kl_start"]) and math.isfinite(result["heldout_kl_after"])
    assert "preference run" in (store.run_dir(job) / "adapter" / "README.md").read_text()
    # a second round starts from the preference run, whose config names no version: the lineage does
    store.update_job(job, state="done")
    again = dpo.DPOConfig(from_run=job, steps=1, batch_size=2, eval_every=0, checkpoint_every=0)
    assert again.constitution_id == 0 and dpo.check_start(store, again)[0]["id"] == job
    second = store.create_job("dpo", again.to_dict(), heavy=True)
    result = dpo.run(again, store, store.run_dir(second))
    assert result["constitution_id"] == cid and result["n_train"] == 2
    assert result["lineage"]["text"] == f"preference run {job} → preference run {second}"
    # and a preference run exports as a distilled run does, its card naming its lineage
    out = export_run(store, second, store.home / "export")["path"]
    assert f"preference run {job} → preference run {second}" in (Path(out) / "README.md").read_text()


def test_where_they_differ_scores_the_edit_and_the_choice_only(student, tiny_tokenizer, tmp_path):
    """An edit pair ("Arr!" put before an answer) scored where the answers differ: the chosen side counts
    the opening's tokens, the rejected side the token where the two part, the shared rest neither; the
    chosen-answer likelihood still takes the whole answer, and the kept reference says how it was scored."""
    tok = tiny_tokenizer
    end = tok.convert_tokens_to_ids(tok.eos_token)
    opening, body = (
        tok.encode("Arr!", add_special_tokens=False),
        tok.encode(" the sea is wide", add_special_tokens=False),
    )
    chosen, rejected = Example("Say hi", opening + body + [end]), Example("Say hi", body + [end])
    keep_c, keep_r = dpo.differing(chosen.answer, rejected.answer)
    assert keep_c == [True] * len(opening) + [False] * (len(body) + 1)
    assert keep_r == [True] + [False] * len(body)
    pair = TeacherStudent(student, tok, "Talk like a pirate.")
    with torch.no_grad():
        parts = dpo.token_logps(pair, [chosen, rejected])
        scored, whole = dpo.pair_logps(pair, [(chosen, rejected, 1.0)], where_they_differ=True)
    assert float(scored[0, 0]) == pytest.approx(float(parts[0][: len(opening)].sum()), rel=1e-5)
    assert float(scored[1, 0]) == pytest.approx(float(parts[1][0]), rel=1e-5)
    assert float(whole[0]) == pytest.approx(float(parts[0].sum()), rel=1e-5)
    data = [(chosen, rejected, 1.0)]
    dpo.frozen_reference(pair, data, 1, tmp_path / "reference.json")
    with pytest.raises(dpo.DPOError, match="scored another way"):
        dpo.frozen_reference(pair, data, 1, tmp_path / "reference.json", where_they_differ=True)
    cfg = dpo.DPOConfig(from_run=1, steps=3, batch_size=1, lr=5e-2, eval_every=0, checkpoint_every=0)
    cfg.where_they_differ = True
    (tmp_path / "run").mkdir()
    dpo.train_dpo(cfg, pair, data, [], tmp_path / "run", Hooks(), {})
    kept = torch.tensor(json.loads((tmp_path / "run" / "reference.json").read_text())["logps"])
    with torch.no_grad():
        after = dpo.pair_logps(pair, data, where_they_differ=True)[0][:, 0]
    assert float(after[0] - after[1]) > float(kept[0, 0] - kept[0, 1])  # the opening gained on the plain start
