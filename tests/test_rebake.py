"""Re-baking from an earlier run (rebake.py, mix.rebake_mix), the category hold-out and the
replay share (mix.py), on the tiny model."""

import copy
import dataclasses
import json

import pytest
import torch

from ctxdistill import adapters, engine, mix, rebake, train
from ctxdistill.constitution import content_hash, load, to_dict
from tests.conftest import run_cli

SYSTEM = "Arr matey, answer like a pirate."
PROMPTS = [
    "What is the capital of France?",
    "Write a poem about rain.",
    "def add(a, b):",
    "Hi",
    "Is the sea wide?",
    "Say hello",
]
TINY = dict(
    quantize="none",
    steps=2,
    max_prompts=6,
    sample_tokens=6,
    eval_prompts=4,
    batch_size=4,
    eval_every=1,
    checkpoint_every=0,
    lora_r=4,
    lora_alpha=8,
    multiturn_share=0.0,  # the counts below are of first-turn answers
)


def save(store, c):
    return store.save_constitution(c.name, to_dict(c), content_hash(c))


def pirate_and_captain(store):
    """Version 1: the shipped pirate; version 2: "matey" replaced by "captain"."""
    c = load("assets/constitutions/pirate.yaml")
    v1 = save(store, c)
    c2 = copy.deepcopy(c)
    matey = next(p for p in c2.principles if p.id == "matey")
    matey.text = 'Ye always call the user "captain", arr!'
    return v1, save(store, c2)


def finished_run(store, cfg: train.TrainConfig) -> int:
    """A training job recorded in the store as the job runner would, trained here."""
    job = store.create_job("train", cfg.to_dict(), owner=cfg.owner, heavy=True)
    result = train.run(cfg, store, store.run_dir(job))
    store.update_job(job, state="done", result=result)
    return job


# --------------------------------------------------------------------------- ranking and the mix


def test_the_prompt_whose_teacher_changed_ranks_first(tiny_model, tiny_tokenizer):
    model = train._setup_model(train.TrainConfig(lora_r=4, lora_alpha=8), copy.deepcopy(tiny_model), seed=0)
    pair = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM, teacher_cache_mb=64)
    examples = engine.sample_answers(pair, PROMPTS, train.TrainConfig(sample_tokens=8), seed=0)
    changed = examples[3]
    # every other answer's teacher is the old student itself (it already agrees); only one teacher changed
    for ex in examples:
        if ex is not changed:
            pair.teacher_cache[(ex.prompt, tuple(ex.answer))] = pair.hidden([ex], with_teacher=False)[0].detach()
    scores = mix.disagreement(pair, examples, batch_size=4)
    assert max(range(len(examples)), key=lambda i: scores[i]) == 3
    assert all(abs(s) < scores[3] / 100 for i, s in enumerate(scores) if i != 3)
    assert scores[3] == pytest.approx(engine.heldout_kl(pair, [changed]), rel=1e-4)  # the held-out KL, per answer
    chosen = mix.rebake_mix(examples, scores, train.TrainConfig(rebake_share=0.2, rebake_replay=0.5))
    assert chosen[0] is changed and len(chosen) == 2 and len({id(e) for e in chosen}) == 2


def test_rebake_mix_takes_the_top_share_and_its_replay_share():
    exs = [engine.Example(f"p{i}", [i]) for i in range(20)]
    scores = [float(i) for i in range(20)]
    chosen = mix.rebake_mix(exs, scores, train.TrainConfig(rebake_share=0.25, rebake_replay=0.5))
    assert [e.prompt for e in chosen[::2]] == ["p19", "p18", "p17", "p16", "p15"]  # most changed first
    assert len(chosen) == 10 and all(int(e.prompt[1:]) < 15 for e in chosen[1::2])  # the replay spread through


def test_a_rebake_trains_on_the_most_changed_first_then_shuffles():
    lengths = [10] * 64
    ordered = train.Schedule(lengths, 4, seed=0, ordered=True)
    assert [ordered.micro_batch(m) for m in range(16)] == [list(range(i, i + 4)) for i in range(0, 64, 4)]
    second = [ordered.micro_batch(m) for m in range(16, 32)]
    assert (
        second
        == [train.Schedule(lengths, 4, seed=0).micro_batch(m) for m in range(16, 32)]
        != [ordered.micro_batch(m) for m in range(16)]
    )
    assert mix.interleave([1, 2, 3, 4], ["a", "b"]) == [1, "a", 2, 3, "b", 4] and mix.interleave([1], []) == [1]


def test_each_change_undone_is_the_reference_of_its_baked_share():
    from ctxdistill.constitution import Constitution, Principle

    a, b, c, d = (Principle(x, x.upper() + ".") for x in "abcd")
    old = Constitution("t", [a, b, c], preamble="Old.")
    new = Constitution("t", [dataclasses.replace(a, text="A2."), c, d], preamble="New.")
    changes = rebake.principle_changes(old, new)
    assert rebake.changed_names(changes) == ["d", "b", "a", "(preamble)"]
    ids = lambda con: [(p.id, p.text) for p in con.principles]
    assert ids(rebake.undone(old, new, "a")) == [("a", "A."), ("c", "C."), ("d", "D.")]  # edited: the old text
    assert ids(rebake.undone(old, new, "d")) == [("a", "A2."), ("c", "C.")]  # added: out
    assert ids(rebake.undone(old, new, "b")) == [("a", "A2."), ("b", "B."), ("c", "C."), ("d", "D.")]  # removed: back
    assert rebake.undone(old, new, "(preamble)").preamble == "Old." and new.preamble == "New."
    assert (
        rebake.changed_names(rebake.principle_changes(old, dataclasses.replace(old, examples=[{"role": "user"}]))) == []
    )


# --------------------------------------------------------------------------- lineage and refusals


def test_rebake_records_its_lineage_in_the_run_card_and_notice(store, tiny_checkpoint):
    v1, v2 = pirate_and_captain(store)
    first = finished_run(store, train.TrainConfig(constitution_id=v1, model=str(tiny_checkpoint), **TINY))
    job = store.get_job(first)
    assert (
        rebake.stale_notice(store, job, v2)
        == f"run {first} was trained on v{v1}; v{v2} changed 1 principle (edited matey)"
    )
    assert rebake.stale_notice(store, job, v1) == ""
    assert rebake.stale_notice(store, job) == rebake.stale_notice(store, job, v2)  # the newest version by default
    logged = []
    cfg = train.TrainConfig(constitution_id=v2, model=str(tiny_checkpoint), from_run=first, rebake_share=0.5, **TINY)
    second = store.create_job("train", cfg.to_dict(), heavy=True)
    result = train.run(
        cfg,
        store,
        store.run_dir(second),
        train.Hooks(log=lambda v, s: logged.append((s, v)), progress=lambda d, t, message: logged.append(message)),
    )
    assert result["lineage"] == {
        "from_run": first,
        "from_version": v1,
        "to_version": v2,
        "changes": {"added": [], "removed": [], "edited": ["matey"]},
        "text": f"re-baked from run {first} (version {v1} → {v2}: edited matey)",
    }
    # the most changed half of 6 prompts, a quarter of the mix replayed (3 + 1), and the default short-answer
    # replay: one prompt next to 6 train prompts
    assert result["n_train"] == 5
    card = (store.runs_dir / str(second) / "adapter" / "README.md").read_text()
    assert f"| lineage | re-baked from run {first} (version {v1} → {v2}: edited matey) |" in card
    run_file = json.loads((store.runs_dir / str(second) / "adapter" / adapters.RUN_FILE).read_text())
    assert run_file["lineage"]["from_run"] == first
    # it started from the old adapter: its first held-out KL is the old student's, below the base's, measured
    # before the training answers are sampled; with the changed principle's baked share (the auto gauge)
    first_log = next(i for i, entry in enumerate(logged) if isinstance(entry, tuple))
    step, values = logged[first_log]
    assert step == 0 and values["heldout_kl"] < result["heldout_kl_before"] and values["gap_closed"] > 0
    assert logged.index("sampling the teacher's training answers") > first_log
    assert logged.index("sampling the teacher's held-out answers") < first_log
    measured = [v for entry in logged if isinstance(entry, tuple) for v in entry[1:] if "heldout_kl" in v]
    assert [k for k in values if k.startswith("baked:")] == ["baked:matey"] and all(
        "baked:matey" in v for v in measured
    )


def test_an_unknown_principle_to_gauge_is_refused_before_the_model_loads(store, tmp_path):
    v1, _ = pirate_and_captain(store)
    with pytest.raises(train.TrainError, match="baked gauge: no principle 'captain' in this constitution"):
        train.run(train.TrainConfig(constitution_id=v1, baked_gauge="arr,captain", **TINY), store, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, refusal",
    [
        ({"model": "other/model"}, "another base model"),
        ({"lora_r": 8}, "another LoRA shape"),
        ({"state": "failed"}, "no adapter to continue from"),
        ({"owner": "visitor-b"}, "not found among your runs"),
        ({"kind": "eval"}, "not a training run"),
    ],
)
def test_from_run_refusals_start_nothing(store, tmp_path, change, refusal):
    v1, v2 = pirate_and_captain(store)
    old = train.TrainConfig(constitution_id=v1, **TINY)
    job = store.create_job(change.get("kind", "train"), old.to_dict(), owner="visitor-a")
    (store.runs_dir / str(job) / "adapter").mkdir(parents=True)
    store.update_job(job, state=change.get("state", "done"))
    new = train.TrainConfig(
        constitution_id=v2,
        from_run=job,
        owner=change.get("owner", "visitor-a"),
        **{**TINY, **{k: v for k, v in change.items() if k in ("model", "lora_r")}},
    )
    with pytest.raises(train.TrainError, match=refusal):
        train.run(new, store, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_from_run_of_a_failed_run_is_refused(workspace):
    from ctxdistill.store import Store

    s = Store(workspace)
    v1, _ = pirate_and_captain(s)
    job = s.create_job("train", train.TrainConfig(constitution_id=v1).to_dict())
    s.update_job(job, state="failed")
    out = run_cli(workspace, "train", "--constitution", str(v1), "--from-run", str(job))
    assert out.returncode != 0 and f"run {job} has no adapter to continue from (it is failed)" in out.stderr
    assert len(s.list_jobs(kind="train")) == 1


# --------------------------------------------------------------------------- category hold-out and replay


def test_category_holdout_never_trains_on_a_held_out_category(store):
    from ctxdistill.prompts import ensure_default_prompts

    ensure_default_prompts(store)
    rows = store.get_prompts("default")
    category = {r["text"]: r["category"] for r in rows}
    cfg = train.TrainConfig(heldout_categories="code, history", eval_prompts=0)
    train_prompts, heldout = mix.split_prompts(store, cfg)
    assert train_prompts and not {category[p] for p in train_prompts} & {"code", "history"}
    assert {category[p] for p in heldout} == {"code", "history"}
    assert len(heldout) == sum(r["split"] == "heldout" and r["category"] in ("code", "history") for r in rows)
    assert set(train_prompts) == {
        r["text"] for r in rows if r["split"] == "train" and r["category"] not in ("code", "history")
    }


def test_a_category_without_held_out_prompts_is_named(store):
    store.add_prompts(
        "mine",
        [
            {"text": "a", "split": "train", "category": "maths"},
            {"text": "b", "split": "heldout", "category": "poems"},
            {"text": "c", "split": "train", "category": "poems"},
        ],
    )
    with pytest.raises(train.TrainError, match="category 'maths' has no held-out prompts .* poems"):
        mix.split_prompts(store, train.TrainConfig(prompt_set="mine", heldout_categories="maths"))
    with pytest.raises(train.TrainError, match="category 'cooking' has no held-out prompts"):
        mix.split_prompts(store, train.TrainConfig(prompt_set="mine", heldout_categories="cooking"))
    assert mix.split_prompts(store, train.TrainConfig(prompt_set="mine", heldout_categories="poems")) == (["a"], ["b"])


def test_replay_fraction_is_the_share_of_the_mix(store):
    store.add_prompts("general", [{"text": f"g{i}", "split": "train"} for i in range(30)])
    cfg = train.TrainConfig(replay_set="general", replay_fraction=0.2)
    replay = mix.replay_prompts(store, cfg, 40)
    assert len(replay) / (len(replay) + 40) == pytest.approx(0.2) and len(set(replay)) == 10
    assert replay == mix.replay_prompts(store, cfg, 40)  # a fixed pick
    assert mix.replay_prompts(store, dataclasses.replace(cfg, replay_fraction=0.0), 40) == []
    # a set smaller than the share needs is gone through again, in a new order: every prompt of the
    # first 30 once, then 10 of them a second time
    twice = mix.replay_prompts(store, dataclasses.replace(cfg, replay_fraction=0.5), 40)
    assert len(twice) == 40 and len(set(twice[:30])) == 30 and set(twice[30:]) < set(twice[:30])
    with pytest.raises(train.TrainError, match="replay prompt set 'nothing' has no train prompts"):
        mix.replay_prompts(store, dataclasses.replace(cfg, replay_set="nothing"), 40)
    with pytest.raises(train.TrainError, match="replay fraction"):
        train.TrainConfig(replay_fraction=1.0).validate()


def test_the_time_estimate_counts_the_mix(store):
    """The prediction before Start sizes the run as it will run: held-out categories, replay
    prompts, and a re-bake's ranking pass."""
    from ctxdistill import estimate

    store.add_prompts(
        "mine",
        [{"text": f"t{i}", "split": "train", "category": "a" if i % 2 else "b"} for i in range(20)]
        + [{"text": f"h{i}", "split": "heldout", "category": "a" if i % 2 else "b"} for i in range(6)],
    )
    store.add_prompts("general", [{"text": f"g{i}", "split": "train"} for i in range(30)])
    cfg = train.TrainConfig(prompt_set="mine", eval_prompts=0, replay_fraction=0.0)
    assert estimate.run_size(cfg, store) == (20, 6)
    # the default replay: the shipped short-answer set, seeded into the workspace where it lacks it
    assert estimate.run_size(train.TrainConfig(prompt_set="mine", eval_prompts=0), store) == (24, 6)
    assert estimate.run_size(dataclasses.replace(cfg, heldout_categories="a"), store) == (10, 3)
    assert estimate.run_size(dataclasses.replace(cfg, replay_set="general", replay_fraction=0.2), store) == (25, 6)
    with pytest.raises(train.TrainError, match="category 'c' has no held-out prompts"):
        estimate.run_size(dataclasses.replace(cfg, heldout_categories="c"), store)
    cal = estimate.Calibration(precision="fp32", load_s=1.0, step_s=1.0, score_s=1.0, decode_s=0.1, prefill_s=0.1)
    fresh = estimate.predict_train(cal, cfg, 20, 6)
    rebake_run = estimate.predict_train(cal, dataclasses.replace(cfg, from_run=1), 20, 6)
    assert "ranking" not in fresh and rebake_run["ranking"] > 0
    assert rebake_run["total"] == pytest.approx(fresh["total"] + rebake_run["ranking"])


def test_replay_answers_join_the_training_mix(store, tiny_checkpoint):
    store.add_prompts(
        "general", [{"text": f"Tell me about {w}.", "split": "train"} for w in ("cats", "rain", "maps", "tea")]
    )
    v1, _ = pirate_and_captain(store)
    cfg = train.TrainConfig(
        constitution_id=v1,
        model=str(tiny_checkpoint),
        replay_set="general",
        replay_fraction=0.25,
        capability_gauge=3,
        **{**TINY, "steps": 1},
    )
    logged = []
    result = train.run(
        cfg,
        store,
        store.run_dir(store.create_job("train", cfg.to_dict())),
        train.Hooks(log=lambda v, s: logged.append((s, v))),
    )
    data = json.loads((store.runs_dir / "1" / "data.json").read_text())
    assert result["n_train"] == 8 and sum(e["prompt"].startswith("Tell me about") for e in data["train"]) == 2
    assert torch.isfinite(torch.tensor(result["gap_closed"]))
    # the capability gauge: the student at every held-out measurement, the teacher once at the start
    gauged = [(s, sorted(k for k in v if k.startswith("capability"))) for s, v in logged if "heldout_kl" in v]
    assert gauged == [(0, ["capability", "capability_teacher"]), (1, ["capability"])]
    assert all(0 <= v["capability"] <= 1 for _, v in logged if "capability" in v)
    assert len(mix.gauge_items(3)) == 3 and len({i.category for i in mix.gauge_items(24)}) > 3


@pytest.fixture
def app(tmp_path):
    """(context, blocks) of the whole app on a fresh workspace."""
    from ctxdistill.ui.app import build_app
    from ctxdistill.ui.common import AppContext

    ctx = AppContext(home=tmp_path / "ws")
    blocks = build_app(ctx)
    yield ctx, blocks
    blocks.close()


def test_distill_and_compare_say_a_run_is_stale_and_fill_the_rebake(app):
    import gradio as gr

    from ctxdistill.ui import stale

    ctx, _ = app
    v1, v2 = pirate_and_captain(ctx.store)
    job = ctx.store.create_job("train", train.TrainConfig(constitution_id=v1).to_dict())
    (ctx.store.runs_dir / str(job) / "adapter").mkdir(parents=True)
    ctx.store.update_job(job, state="done")
    note, button = stale.stale_view(ctx, job, None)  # Distill: one run
    assert note == f"**Stale:** run {job} was trained on v{v1}; v{v2} changed 1 principle (edited matey).  \n"
    assert button["visible"] is True
    assert stale.stale_view(ctx, [job], None) == (note, button)  # Compare: the picked runs
    version, from_run, section = stale.rebake_offer(ctx, [job], None)
    assert version["value"] == v2 and from_run == job and section.open is True
    assert ctx.rebake_form[1].elem_id == "train-from-run"
    fresh = ctx.store.create_job("train", train.TrainConfig(constitution_id=v2).to_dict())
    (ctx.store.runs_dir / str(fresh) / "adapter").mkdir(parents=True)
    ctx.store.update_job(fresh, state="done")
    assert stale.stale_view(ctx, fresh, None)[0] == ""
    with pytest.raises(gr.Error, match="None of the picked runs"):
        stale.rebake_offer(ctx, [fresh], None)


def test_distill_form_refuses_a_run_it_cannot_continue_from(app):
    import inspect

    import gradio as gr

    from tests.test_demo import start_values

    ctx, blocks = app
    v1, v2 = pirate_and_captain(ctx.store)
    failed = ctx.store.create_job("train", train.TrainConfig(constitution_id=v1).to_dict())
    ctx.store.update_job(failed, state="failed")
    on_start = next(
        inspect.unwrap(f.fn)
        for f in blocks.fns.values()
        if f.fn is not None and f.fn.__name__ == "on_start" and f.fn.__module__ == "ctxdistill.ui.distill"
    )
    for over, refusal in (
        ({"from_run": failed}, "no adapter to continue from"),
        ({"heldout_categories": "cooking"}, "category 'cooking' has no held-out prompts"),
    ):
        with pytest.raises(gr.Error, match=refusal):
            on_start(start_values(blocks, version=v2, **over), request=None)
    assert [j["id"] for j in ctx.store.list_jobs(kind="train")] == [failed]  # nothing started


def test_distill_plots_the_changed_principles_baked_share_with_the_held_out_kl(app):
    from ctxdistill.ui.distill import metrics_frames

    ctx, _ = app
    job = ctx.store.create_job("train", train.TrainConfig(constitution_id=1).to_dict())
    for step, share in ((0, 0.1), (10, 0.6)):
        ctx.store.log_metrics(
            job, step, {"heldout_kl": 0.5 - share / 2, "gap_closed": 0.8, "baked:matey": share, "loss": 1.0}
        )
    _, heldout, gauges = metrics_frames(ctx, job)  # the shares (0..1) on an axis of their own
    shares = gauges[gauges["metric"] == "baked share: matey"]
    assert list(shares["step"]) == [0, 10] and list(shares["value"]) == pytest.approx([0.1, 0.6])
    assert set(heldout["metric"]) == {"held-out KL"} and set(gauges["metric"]) == {"baked share: matey"}
