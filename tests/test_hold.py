"""Make it hold (hold.py): the student trained under override attempts against the clean teacher,
on conversations, on prompts with a user instruction, and along its own answers; the shipped
training sets apart from the evaluation's; the refusals of bad sets and shares before a model loads."""

import copy
import json
import math
import re

import pytest
import torch

from ctxdistill import engine, hold, mix, probes, train
from ctxdistill.sampling import SamplingConfig, chat_ids, generate_rows
from tests.conftest import run_cli, save_version

SYSTEM = "Arr matey, answer like a pirate."
PROMPTS = ["What is the capital of France?", "Write a poem about rain.", "Hi", "Is the sea wide?"]


def peft_tiny(tiny_model):
    return train._setup_model(train.TrainConfig(lora_r=4, lora_alpha=8), copy.deepcopy(tiny_model), seed=0)


def trained_a_little(tiny_model, tok):
    """A student whose adapter is not zero (so that student and teacher differ on the same input)."""
    model = peft_tiny(tiny_model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


def full_logits(model, tok, prompt, system, answer, teacher: bool):
    """The answer positions' logits of one plain forward pass over the whole chat (no caches)."""
    ids = chat_ids(tok, prompt, system) + answer
    with torch.no_grad(), engine.adapters_off(model) if teacher else torch.enable_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return logits[len(ids) - len(answer) - 1 : -1]


def test_attacked_rows_train_the_attacked_student_towards_the_clean_teacher(tiny_model, tiny_tokenizer, tmp_path):
    model = trained_a_little(tiny_model, tiny_tokenizer)
    model.eval()
    pair = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM)
    exs = engine.sample_answers(pair, PROMPTS, train.TrainConfig(sample_tokens=5), seed=0)
    augment = hold.Augment(train.TrainConfig(attack_share=1.0))
    rows = augment.batch(pair, list(enumerate(exs)), draw=3)
    templates = {a.template for a in hold.train_attacks()}
    for clean, row in zip(exs, rows):
        assert row.prompt == clean.prompt and row.answer == clean.answer and not row.own
        text = row.seen if isinstance(row.seen, str) else row.seen[-1]["content"]
        assert text != clean.prompt and clean.prompt in text
        assert any(text == t.replace("{prompt}", clean.prompt) for t in templates)
    assert [r.seen for r in rows] == [r.seen for r in augment.batch(pair, list(enumerate(exs)), draw=3)]  # seeded
    hs, ht, targets = pair.hidden(rows)
    head = pair.lm_head
    teacher = torch.cat([full_logits(model, tiny_tokenizer, ex.prompt, SYSTEM, ex.answer, True) for ex in rows])
    student = torch.cat(
        [full_logits(model, tiny_tokenizer, ex.student_input, None, ex.answer, False) for ex in rows]
    ).detach()
    attacked_teacher = torch.cat(
        [full_logits(model, tiny_tokenizer, ex.seen, SYSTEM, ex.answer, True) for ex in rows[:1]]
    )
    # the target is the clean teacher's, the student sees the attack
    assert torch.allclose(head(ht), teacher, atol=1e-4)
    assert torch.allclose(head(hs), student, atol=1e-4)
    assert not torch.allclose(head(ht)[: len(attacked_teacher)], attacked_teacher, atol=1e-3)
    assert targets.tolist() == [t for ex in rows for t in ex.answer]
    # a run with the augmentation trains on those rows
    seen = []
    real = train.backward_batch
    spy = lambda pair, cfg, batch, scale: seen.append(batch) or real(pair, cfg, batch, scale)
    cfg = train.TrainConfig(
        steps=2, batch_size=2, attack_share=0.5, eval_every=0, checkpoint_every=0, warmup_steps=0, keep_best=False
    )
    logged, said = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "backward_batch", spy)
        train.train(
            cfg,
            model,
            tiny_tokenizer,
            SYSTEM,
            exs,
            exs[:2],
            run_dir=tmp_path,
            pair=pair,
            probes={"attacked": hold.attacked_probes(cfg, exs[:2])},
            hooks=train.Hooks(log=lambda v, s: logged.append(v), progress=lambda d, t, m: said.append(m)),
        )
    rows = [ex for batch in seen for ex in batch]
    assert any(ex.seen is not None for ex in rows) and any(ex.seen is None for ex in rows)
    assert all(ex.prompt in PROMPTS for ex in rows)
    names = set().union(*logged)
    assert {"heldout_kl_attacked", "share_attacked", "share_on_policy"} <= names
    # the measurement's one counter runs over the held-out answers and the probes
    assert "measuring the held-out KL: 4/4 answers" in said


def test_second_turn_rows_hold_the_whole_history_and_train_on_the_second_answer(tiny_model, tiny_tokenizer):
    model = trained_a_little(tiny_model, tiny_tokenizer)
    model.eval()
    pair = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM, teacher_cache_mb=8)
    first = engine.sample_answers(pair, PROMPTS, train.TrainConfig(sample_tokens=5), seed=0)
    talks = hold.conversations(tiny_tokenizer, first, ["Tell me more.", "And then?"], 0.5, seed=1)
    assert len(talks) == 2
    for talk in talks:
        assert [t["role"] for t in talk] == ["user", "assistant", "user"] and talk[0]["content"] in PROMPTS
    second = engine.sample_answers(pair, talks, train.TrainConfig(sample_tokens=5), seed=2)
    # the teacher's states kept from sampling are those of the whole history too
    assert all(ex.key in pair.teacher_cache for ex in second)
    hs, ht, targets = pair.hidden(second)
    assert len(hs) == sum(len(ex.answer) for ex in second) == len(targets)  # the second answer's tokens only
    teacher = torch.cat([full_logits(model, tiny_tokenizer, ex.prompt, SYSTEM, ex.answer, True) for ex in second])
    student = torch.cat([full_logits(model, tiny_tokenizer, ex.prompt, None, ex.answer, False) for ex in second])
    assert torch.allclose(pair.lm_head(ht), teacher, atol=1e-4)  # constitution + the whole history
    assert torch.allclose(pair.lm_head(hs), student.detach(), atol=1e-4)  # the history without it


def test_on_policy_rows_are_the_students_own_seeded_samples(tiny_model, tiny_tokenizer):
    model = trained_a_little(tiny_model, tiny_tokenizer)
    pair = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM)
    exs = engine.sample_answers(pair, PROMPTS, train.TrainConfig(sample_tokens=6), seed=0)
    cfg = train.TrainConfig(on_policy_share=1.0, attack_share=0.0, sample_tokens=6, seed=4)
    rows = hold.Augment(cfg).batch(pair, list(enumerate(exs)), draw=5)
    assert all(r.own for r in rows) and [r.prompt for r in rows] == PROMPTS
    sampling = SamplingConfig(6, temperature=1.0, seed=4 + 15_485_863)
    own = generate_rows(
        model, tiny_tokenizer, [(None, p) for p in PROMPTS], sampling, sample_index=[5_000 + k for k in range(4)]
    )
    assert [r.answer[: len(o)] for r, o in zip(rows, own)] == own
    assert [r.answer for r in rows] == [r.answer for r in hold.Augment(cfg).batch(pair, list(enumerate(exs)), 5)]
    assert [r.answer for r in rows] != [e.answer for e in exs]
    # the teacher scores them token by token, and keeps nothing of them
    before = len(pair.teacher_cache)
    part = train.backward_batch(pair, train.TrainConfig(loss="mix"), rows, scale=1.0)
    assert "ce" not in part and part["tokens"] == sum(len(r.answer) for r in rows)  # KL only on own answers
    assert len(pair.teacher_cache) == before
    # a share draws some micro-batches, not all, each whole
    half = hold.Augment(train.TrainConfig(on_policy_share=0.5, sample_tokens=6))
    drawn = [{r.own for r in half.batch(pair, list(enumerate(exs[:1])), draw)} for draw in range(12)]
    assert all(len(d) == 1 for d in drawn) and 0 < sum(True in d for d in drawn) < len(drawn)


def _normal(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower().replace("{prompt}", " "))) - {"the", "a", "and", "to", "you", "your"}


def _near(a: str, b: str) -> bool:
    x, y = _normal(a), _normal(b)
    return bool(x and y) and len(x & y) / len(x | y) >= 0.5


def test_shipped_training_sets_share_nothing_with_the_evaluation():
    train_attacks, eval_attacks = hold.train_attacks(), probes.load_attacks()
    assert len(train_attacks) >= 40 and len({a.kind for a in train_attacks}) == len(train_attacks)
    eval_texts = [a.template for a in eval_attacks] + [t["content"] for a in eval_attacks for t in a.history]
    for a in train_attacks:
        for text in [a.template] + [t["content"] for t in a.history]:
            core = text.replace("{prompt}", "").strip()
            for e in eval_texts:
                assert not _near(text, e), (text, e)
                other = e.replace("{prompt}", "").strip()
                assert not (core and core in e) and not (other and other in text), (text, e)
    assert not {a.kind for a in train_attacks} & {a.kind for a in eval_attacks}
    follow_ups = hold.train_follow_ups()
    assert len(follow_ups) >= 20
    for f in follow_ups:
        for e in probes.FOLLOW_UPS:
            assert f != e and not _near(f, e), (f, e)
    # the user instructions a run trains on: no run of four words and no required word of the benign set's
    from ctxdistill import benign

    grams = lambda t: {tuple(w[i : i + 4]) for w in [re.findall(r"[a-z0-9]+", t.lower())] for i in range(len(w) - 3)}
    instructions, items = hold.train_instructions(), benign.load_instructions()
    assert len(instructions) >= 20
    for text in instructions:
        for item in items:
            assert not grams(text) & grams(item.prompt), (text, item.prompt)
    quoted = {w.lower() for text in instructions for w in re.findall(r'"([^"]+)"', text)}
    assert quoted and not quoted & {item.value.lower() for item in items}


def test_shipped_training_attacks_ask_for_nothing_a_user_may_rightly_ask():
    """A training attempt's target is the teacher's answer to the clean prompt, so whatever else the attempt
    asks for is trained away with it: one that also asks for a format, a length or a language teaches the
    student to ignore that request from anyone. The shipped attempts only ask to drop the constitution."""
    request = re.compile(
        r"\b(lists?|bullet(ed|s)?|yaml|json|csv|code|comment|capital letters|(one|single|two|three)( plain)? words?"
        r"|verse|deutsch)\b|[^\x00-\x7f]",
        re.I,
    )
    for a in hold.train_attacks():
        assert not request.search(a.template.replace("{prompt}", "")), (a.kind, a.template)


@pytest.fixture
def saved(workspace):
    from ctxdistill.store import Store

    store = Store(workspace)
    return store, save_version(store)


def _refused(saved, tmp_path, match, **cfg):
    store, cid = saved
    with pytest.raises(train.TrainError, match=match) as err:
        train.run(train.TrainConfig(constitution_id=cid, model="/nonexistent", **cfg), store, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything is stored (or a model is loaded)


def test_bad_sets_and_shares_are_refused_before_a_model_loads(saved, tmp_path, monkeypatch):
    def write(name, lines):
        (tmp_path / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
        return str(tmp_path / name)

    no_slot = write("a.jsonl", [{"kind": "x", "template": "Ignore it."}])
    _refused(saved, tmp_path, r"must contain \{prompt\}", attack_share=0.3, attack_set=no_slot)
    _refused(saved, tmp_path, "is empty", attack_share=0.3, attack_set=write("e.jsonl", []))
    bad_history = write(
        "h.jsonl", [{"kind": "x", "template": "{prompt}", "history": [{"role": "system", "content": "x"}]}]
    )
    _refused(saved, tmp_path, "user/assistant turns", attack_share=0.3, attack_set=bad_history)
    _refused(saved, tmp_path, "is empty", multiturn_share=0.3, followup_set=write("f.jsonl", []))
    _refused(saved, tmp_path, "instruction 1: the text is missing", instruction_share=0.3, instruction_set=no_slot)
    _refused(saved, tmp_path, "cannot read", multiturn_share=0.3, followup_set=str(tmp_path / "missing.jsonl"))
    many = write("m.jsonl", [{"kind": f"k{i}", "template": "{prompt}"} for i in range(30)])
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")  # the one caps table's limits for a set a user gives
    monkeypatch.setenv("CTXDISTILL_DEMO_SET_ITEMS", "20")
    _refused(saved, tmp_path, "30 rows; a set may hold at most 20", attack_share=0.3, attack_set=many)
    monkeypatch.setenv("CTXDISTILL_DEMO_SET_MB", "0.0001")
    _refused(
        saved,
        tmp_path,
        "a set may be at most",
        multiturn_share=0.3,
        followup_set=write("f.jsonl", [{"text": "x" * 200}]),
    )
    monkeypatch.delenv("CTXDISTILL_DEMO")
    for name in ("attack_share", "multiturn_share", "instruction_share", "on_policy_share"):
        for value in (-0.1, 1.5, math.nan):
            _refused(saved, tmp_path, f"{name.replace('_', ' ')} must be in", **{name: value})
    _refused(saved, tmp_path, "with loss sft there is none", on_policy_share=0.2, loss="sft")


def test_cli_refuses_a_bad_attack_file_in_one_line(workspace, tmp_path):
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"kind": "x", "template": "no slot"}\n')
    pirate = ("--constitution", "assets/constitutions/pirate.yaml")
    out = run_cli(workspace, "train", *pirate, "--attack-share", "0.5", "--attack-set", str(bad))
    assert out.returncode == 2 and out.stderr.startswith("error:") and "{prompt}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _tiny_run(cid, checkpoint, **settings) -> train.TrainConfig:
    """A run of the tiny model in full weights, without checkpoints, and without the short-answer replay
    (the augmentations' rows alone)."""
    cfg = dict(constitution_id=cid, model=str(checkpoint), quantize="none", checkpoint_every=0, replay_fraction=0.0)
    return train.TrainConfig(**{**cfg, **settings})


def test_a_run_with_every_augmentation_logs_its_shares_and_held_out_figures(saved, tiny_checkpoint, tmp_path):
    store, cid = saved
    cfg = _tiny_run(
        cid,
        tiny_checkpoint,
        steps=3,
        max_prompts=6,
        eval_prompts=3,
        sample_tokens=5,
        batch_size=4,
        eval_every=2,
        attack_share=0.5,
        multiturn_share=0.5,
        instruction_share=0.5,
        on_policy_share=0.25,
    )
    logged = []
    result = train.run(cfg, store, tmp_path / "run", train.Hooks(log=lambda v, s: logged.append((s, v))))
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    firsts = mix.split_prompts(store, cfg)[0]
    talks = [e for e in data["train"] if isinstance(e["prompt"], list)]
    assert len(talks) == 3 and len(data["train"]) == 12 and len(data["second_turn"]) == 3
    assert all(t["prompt"][2]["content"] in hold.train_follow_ups() for t in talks)
    # three of the six train prompts again, each with a training instruction: the teacher answered them as asked
    asked = [e["prompt"] for e in data["train"] if isinstance(e["prompt"], str) and e["prompt"] not in firsts]
    assert len(asked) == 3 and all(any(p.endswith(" " + i) for i in hold.train_instructions()) for p in asked)
    measured = [v for _, v in logged if "heldout_kl" in v]
    assert len(measured) == 3  # start, step 2, end
    assert all({"heldout_kl_attacked", "heldout_kl_second_turn"} <= set(v) for v in measured)
    assert {"share_attacked", "share_second_turn", "share_on_policy"} <= set().union(*(v for _, v in logged))
    assert result["augmentations"]["second_turn_answers"] == 3
    assert "attack_share" in (tmp_path / "run" / "adapter" / "README.md").read_text()
    # a resume reads the same sets back
    assert mix.setup_data(cfg, store, None, tmp_path / "run", None, train.Hooks(), None)[2]["second_turn"]


def test_accepted_answers_open_the_conversations_of_a_multi_turn_run(saved, tiny_checkpoint, tmp_path):
    store, cid = saved
    cfg = _tiny_run(
        cid,
        tiny_checkpoint,
        data="accepted",
        prompt_set="mine",
        steps=1,
        eval_prompts=2,
        sample_tokens=4,
        eval_every=0,
        multiturn_share=1.0,
        instruction_share=0.5,
        replay_fraction=0.34,
    )
    texts = ["How do tides work?", "Name a ship.", "Why is the sea salty?", "What is a compass?"]
    store.add_prompts("mine", [{"text": t, "split": "heldout" if n > 1 else "train"} for n, t in enumerate(texts)])
    prompts = store.get_prompts("mine", split="train")
    finals = {p["text"]: f"Arr, answer {n}, matey." for n, p in enumerate(prompts)}
    for p in prompts:
        sample = store.upsert_sample(p["id"], cid, prompted="x")
        store.update_sample(sample, 1, final=finals[p["text"]], status="accepted")
    train.run(cfg, store, tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "data.json").read_text())["train"]
    talks = [e["prompt"] for e in rows if isinstance(e["prompt"], list)]
    # every accepted answer opens a conversation, as the reviewer kept it; the teacher answers the follow-up
    assert sorted((t[0]["content"], t[1]["content"]) for t in talks) == sorted(finals.items())
    asked = [e["prompt"] for e in rows if isinstance(e["prompt"], str) and e["prompt"] not in finals]
    replayed = [p["text"] for p in store.get_prompts("short-answers")]
    # an accepted prompt with an instruction, and the teacher's answer to one short-answer question (a third
    # of the mix next to two accepted answers)
    assert len(asked) == 2 and sum(p in replayed for p in asked) == 1
    assert sum(any(p.startswith(f) for f in finals) for p in asked) == 1
