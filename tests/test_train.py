"""The distillation trainer: the shared teacher/student model (engine.py), the loop's
checkpoints, resume and faults on the tiny model, and one short run on the embedded model."""

import copy
import json
import math

import pytest
import torch

from ctxdistill import adapters, engine, losses, train
from tests.conftest import run_cli, save_version

SYSTEM = "Arr matey, answer like a pirate."
PROMPTS = [
    "What is the capital of France?",
    "Write a poem about rain.",
    "def add(a, b):",
    "Hi",
    "Is the sea wide?",
    "Say hello",
]


def test_length_grouped_batches_cover_everything_once():
    lengths = [5, 40, 6, 38, 7, 41, 3, 39, 12, 30] * 4
    batches = train.length_grouped_batches(lengths, 2, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert batches == train.length_grouped_batches(lengths, 2, seed=1, epoch=0)
    assert batches != train.length_grouped_batches(lengths, 2, seed=1, epoch=1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 150  # pairs (random pairs: ~340) of similar length, not random pairs


def test_warmup_then_constant_or_a_decay():
    values = [train.lr_lambda(train.TrainConfig(steps=22, warmup_steps=2))(s) for s in range(22)]
    assert values[0] < values[1] < values[2] == 1.0 == values[17]  # the default stays at the peak for 3/4 ...
    assert 1.0 > values[18] > values[19] > values[20] > values[21] > 0 and values[-1] < 0.25  # ... then decays to 0
    constant = [train.lr_lambda(train.TrainConfig(steps=10, warmup_steps=2, schedule="constant"))(s) for s in range(10)]
    assert constant[0] < constant[1] < constant[2] == 1.0 == constant[-1]
    for schedule in ("cosine", "linear"):
        f = train.lr_lambda(train.TrainConfig(steps=10, warmup_steps=2, schedule=schedule))
        values = [f(s) for s in range(10)]
        assert values[0] < values[1] < values[2] == 1.0
        assert values[-1] < 0.2 and all(a >= b for a, b in zip(values[2:], values[3:]))


def test_config_validation_names_every_problem():
    with pytest.raises(train.TrainError) as err:
        train.TrainConfig(loss="dpo", steps=0, lr=-1, quantize="8bit").validate()
    for word in ("loss", "steps", "learning rate", "quantize"):
        assert word in str(err.value)
    with pytest.raises(train.TrainError, match="unknown"):
        train.TrainConfig.from_dict({"epochs": 3})


# --------------------------------------------------------------------------- the model


def peft_tiny(tiny_model, **overrides):
    cfg = train.TrainConfig(lora_r=4, lora_alpha=8, **overrides)
    return train._setup_model(cfg, copy.deepcopy(tiny_model), seed=0)


def examples(model, tok, n=6, tokens=10):
    d = engine.TeacherStudent(model, tok, SYSTEM)
    return engine.sample_answers(d, PROMPTS[:n], train.TrainConfig(sample_tokens=tokens), seed=0)


def test_zero_initialised_adapter_student_with_constitution_equals_teacher(tiny_model, tiny_tokenizer):
    from ctxdistill.sampling import chat_ids

    model = peft_tiny(tiny_model)
    ids = torch.tensor([chat_ids(tiny_tokenizer, "Hi there", SYSTEM) + [5, 6, 7]])
    student = model(input_ids=ids).logits
    with model.disable_adapter():
        teacher = model(input_ids=ids).logits
    assert torch.allclose(student, teacher, atol=1e-6)
    # and the teacher through the run's cached constitution prefix gives the same distribution
    d = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM)
    ex = engine.Example("Hi there", [5, 6, 7])
    hs, ht, targets = d.hidden([ex])
    assert targets.tolist() == [5, 6, 7]
    assert torch.allclose(d.lm_head(ht), teacher[0, -4:-1], atol=1e-4)


BARE_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'A:' }}{% endif %}"
)


@pytest.mark.parametrize("attention, template", [("eager", None), ("sdpa", None), ("eager", BARE_TEMPLATE)])
def test_student_shared_prefix_matches_full_sequences_and_their_gradients(
    tiny_model, tiny_tokenizer, attention, template
):
    """The student's constant prefix is encoded once per batch and shared by its rows: its hidden
    states and the adapter's gradients equal those of encoding every row whole. Eager attention is
    training's on the CPU, sdpa on CUDA; a template whose chats share no first tokens has no prefix."""
    from ctxdistill.sampling import chat_ids, system_prefix

    model = peft_tiny(tiny_model)
    model.get_base_model().set_attn_implementation(attention)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter, so the prefix itself depends on it
    if template:
        tiny_tokenizer = copy.deepcopy(tiny_tokenizer)
        tiny_tokenizer.chat_template = template
    assert bool(system_prefix(tiny_tokenizer, None)) == (template is None)
    exs = [engine.Example("Hi there", [5, 6, 7]), engine.Example("Write a poem about the sea.", [9, 4, 8, 2, 11])]
    lora = [p for p in model.parameters() if p.requires_grad]
    hs, _, targets = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM).hidden(exs, with_teacher=False)
    shared = torch.autograd.grad(hs.square().sum(), lora)
    rows = []
    for ex in exs:
        ids = torch.tensor([chat_ids(tiny_tokenizer, ex.prompt) + ex.answer])
        h = model.get_base_model().get_decoder()(input_ids=ids).last_hidden_state
        rows.append(h[0, -len(ex.answer) - 1 : -1])
    whole = torch.cat(rows)
    assert targets.tolist() == [5, 6, 7, 9, 4, 8, 2, 11]
    assert torch.allclose(hs, whole, atol=1e-4)
    for a, b in zip(shared, torch.autograd.grad(whole.square().sum(), lora)):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def test_teacher_cache_gives_the_same_states_without_a_second_teacher_pass(tiny_model, tiny_tokenizer, monkeypatch):
    model = peft_tiny(tiny_model)
    exs = examples(model, tiny_tokenizer, n=4)
    plain = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM)
    _, expected, _ = plain.hidden(exs)
    per_row = list(expected.split([len(e.answer) for e in exs]))
    room = sum(p.nbytes for p in per_row[1:]) / 2**20  # room for the last 3 rows, not the first
    cached = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM, teacher_cache_mb=room)
    _, first, _ = cached.hidden(exs[::-1])  # another order and padding: the same rows
    assert torch.allclose(first, torch.cat(per_row[::-1]), atol=1e-5)
    assert len(cached.teacher_cache) == 3 and plain.teacher_cache == {}
    rows_encoded = []
    real = engine._hidden
    monkeypatch.setattr(
        engine, "_hidden", lambda m, prefixes, seqs, *a: rows_encoded.append(len(seqs)) or real(m, prefixes, seqs, *a)
    )
    _, again, _ = cached.hidden(exs)
    assert rows_encoded == [1]  # only the one teacher row not in the cache
    assert torch.allclose(again, expected, atol=1e-5)


def test_sampling_keeps_the_teacher_states_its_answers_came_from(tiny_model, tiny_tokenizer, monkeypatch):
    from ctxdistill import sampling

    model = peft_tiny(tiny_model)
    end = tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.eos_token)
    real_pick, calls = sampling._pick, []

    def pick(logits, cfg, generators):  # row 0 ends its answer by itself at its 3rd token
        token = real_pick(logits, cfg, generators)
        calls.append(1)
        return torch.where(torch.arange(len(token)) == 0, end, token) if len(calls) == 3 else token

    monkeypatch.setattr(sampling, "_pick", pick)
    sampler = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM, teacher_cache_mb=1)
    exs = engine.sample_answers(sampler, PROMPTS[:3], train.TrainConfig(sample_tokens=6), seed=0)
    assert [len(e.answer) for e in exs] == [3, 6, 6] and exs[0].answer[-1] == end
    assert len(sampler.teacher_cache) == 3
    _, expected, _ = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM).hidden(exs)  # a teacher forward pass
    rows_encoded = []
    real = engine._hidden
    monkeypatch.setattr(
        engine, "_hidden", lambda m, prefixes, seqs, *a: rows_encoded.append(len(seqs)) or real(m, prefixes, seqs, *a)
    )
    _, kept, _ = sampler.hidden(exs)
    assert rows_encoded == []  # no teacher pass
    assert torch.allclose(kept, expected, atol=1e-4)


def test_teacher_and_student_see_different_contexts(tiny_model, tiny_tokenizer):
    model = peft_tiny(tiny_model)
    d = engine.TeacherStudent(model, tiny_tokenizer, SYSTEM)
    exs = examples(model, tiny_tokenizer, n=3)
    hs, ht, _ = d.hidden(exs)
    assert hs.shape == ht.shape and hs.shape[0] == sum(len(e.answer) for e in exs)
    assert not torch.allclose(hs, ht)


def test_only_lora_parameters_change(tiny_model, tiny_tokenizer, tmp_path):
    model = peft_tiny(tiny_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    exs = examples(model, tiny_tokenizer)
    train.train(
        train.TrainConfig(
            steps=2, batch_size=3, lr=1e-2, eval_every=0, checkpoint_every=0, warmup_steps=0, keep_best=False
        ),
        model,
        tiny_tokenizer,
        SYSTEM,
        exs,
        exs[:2],
        run_dir=tmp_path,
    )
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def run_tiny(tiny_model, tok, run_dir, steps, hooks=train.Hooks(), **cfg):
    torch.manual_seed(123)
    model = peft_tiny(tiny_model, lora_dropout=0.1)
    exs = examples(model, tok)
    config = train.TrainConfig(
        **{
            **dict(
                steps=steps,
                batch_size=2,
                grad_accum=2,
                lr=5e-3,
                warmup_steps=1,
                eval_every=2,
                checkpoint_every=2,
                lora_r=4,
                lora_alpha=8,
                lora_dropout=0.1,
                keep_best=False,
            ),
            **cfg,
        }
    )
    return model, train.train(config, model, tok, SYSTEM, exs, exs[:3], run_dir=run_dir, hooks=hooks)


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_resume_reaches_the_same_state(tiny_model, tiny_tokenizer, tmp_path):
    straight, _ = run_tiny(tiny_model, tiny_tokenizer, tmp_path / "a", steps=6)
    stop_after = iter([False] * 3 + [True] * 100)
    _, result = run_tiny(
        tiny_model, tiny_tokenizer, tmp_path / "b", steps=6, hooks=train.Hooks(should_stop=lambda: next(stop_after))
    )
    assert result["stopped"] and result["step"] == 3
    assert adapters.latest_checkpoint(tmp_path / "b").name == "step-000003"
    resumed, result = run_tiny(tiny_model, tiny_tokenizer, tmp_path / "b", steps=6)
    assert result["step"] == 6 and not result["stopped"]
    a, b = lora_state(straight), lora_state(resumed)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_checkpoints_report_their_phase_and_progress(tiny_model, tiny_tokenizer, tmp_path):
    said, shown = [], []
    hooks = train.Hooks(info=said.append, progress=lambda done, total, message: shown.append((done, message)))
    run_tiny(tiny_model, tiny_tokenizer, tmp_path, steps=4, hooks=hooks)
    assert [m for m in said if "checkpoint" in m] == [
        "phase: writing checkpoint step-000002",
        "phase: writing checkpoint step-000004",
    ]
    assert (2, "writing checkpoint step-000002: 0/2 files") in shown
    assert shown[-1][0] == 4 and shown[-1][1].startswith("writing checkpoint step-000004: 2/2 files")


def test_metrics_have_fixed_names_and_held_out_goes_down(tiny_model, tiny_tokenizer, tmp_path):
    logged = []
    _, result = run_tiny(
        tiny_model, tiny_tokenizer, tmp_path, steps=6, hooks=train.Hooks(log=lambda v, s: logged.append((s, v)))
    )
    names = set().union(*(v for _, v in logged))
    assert {"loss", "kl", "lr", "tokens_per_s", "peak_mem_mb", "heldout_kl"} <= names
    assert result["heldout_kl_after"] < result["heldout_kl_before"]
    assert 0 < result["gap_closed"] <= 1
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "gap closed" in card and "kl" in card


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.token_losses

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 5:  # 1 held-out evaluation, then 2 micro-batches per step: step 3 goes bad
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(losses, "token_losses", poisoned)
    with pytest.raises(train.TrainError, match="became nan.*step-000002"):
        run_tiny(tiny_model, tiny_tokenizer, tmp_path, steps=6, eval_every=0)
    state = torch.load(adapters.latest_checkpoint(tmp_path) / "state.pt", weights_only=False)
    assert state["step"] == 2


def test_out_of_memory_names_the_settings_to_lower(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    model = peft_tiny(tiny_model)
    exs = examples(model, tiny_tokenizer, n=2)

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(train, "chunked_loss", boom)
    with pytest.raises(train.TrainError, match="batch-size.*kl-chunk"):
        train.train(train.TrainConfig(steps=1, eval_every=0), model, tiny_tokenizer, SYSTEM, exs, [], run_dir=tmp_path)


def test_corrupt_and_mismatched_adapters_are_refused(tiny_model, tiny_tokenizer, tmp_path):
    from tests.conftest import make_tiny_model

    model = peft_tiny(tiny_model)
    adapters.save_adapter(model, tmp_path / "good", {"step": 1})
    adapters.load_adapter(copy.deepcopy(tiny_model), tmp_path / "good")  # fits
    corrupt = tmp_path / "corrupt"
    adapters.save_adapter(model, corrupt, {})
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(adapters.AdapterError, match="corrupt"):
        adapters.load_adapter(copy.deepcopy(tiny_model), corrupt)
    other = make_tiny_model(tiny_tokenizer)
    other.config.hidden_size = 48
    with pytest.raises(adapters.AdapterError, match="another base model"):
        adapters.check_adapter(tmp_path / "good", other)
    with pytest.raises(adapters.AdapterError, match="not an adapter"):
        adapters.load_adapter(copy.deepcopy(tiny_model), tmp_path)


def test_export_adapter_and_merged_model(tiny_model, tiny_tokenizer, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    model = peft_tiny(tiny_model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapter = adapters.save_adapter(
        model, tmp_path / "adapter", {"constitution": "pirate", "loss": "kl", "gap_closed": 0.9}
    )
    out = adapters.export(adapter, tmp_path / "export")
    assert (out / "adapter_model.safetensors").is_file() and "pirate" in (out / "README.md").read_text()
    merged = adapters.export(adapter, tmp_path / "merged", merged=True, model_spec=str(tiny_checkpoint))
    again = AutoModelForCausalLM.from_pretrained(merged)
    assert again.dtype == torch.bfloat16
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(again.float()(ids).logits, model(ids).logits, atol=0.05)
    assert "library_name: transformers" in (merged / "README.md").read_text()


def test_push_needs_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(adapters.AdapterError, match="HF_TOKEN"):
        adapters.push_to_hub(tmp_path, "me/pirate")


def assert_four_bit_gradients_match_full_precision(model, tok, exs, config):
    """The adapter's gradients through the 4-bit base equal those through a float32 copy of it
    (the 4-bit weights dequantised), also after eval-mode passes over the 4-bit layers."""
    import bitsandbytes as bnb
    from transformers import LlamaForCausalLM

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference = LlamaForCausalLM(config)
    weights = {}
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weights[name.replace(".base_layer", "") + ".weight"] = bnb.functional.dequantize_4bit(
                module.weight.data, module.weight.quant_state
            ).float()
    state = {
        k: v.float()
        for k, v in model.get_base_model().state_dict().items()
        if "lora_" not in k and "base_layer" not in k
    }
    state.update(weights)
    reference.load_state_dict({k: state[k] for k in reference.state_dict()}, strict=True)
    reference = train._setup_model(train.TrainConfig(lora_r=4, lora_alpha=8), reference, seed=0)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items() if "lora_" in k}, strict=False)

    def grads(m):
        hs, ht, y = engine.TeacherStudent(m, tok, SYSTEM).hidden(exs)
        m.zero_grad(set_to_none=True)
        losses.chunked_loss(m.get_output_embeddings(), "kl", hs, ht, y, backward_scale=1 / len(y))
        return torch.cat([p.grad.flatten() for n, p in sorted(m.named_parameters()) if p.requires_grad])

    four_bit, full = grads(model), grads(reference)
    assert (four_bit - full).norm() / full.norm() < 0.1  # bf16 compute in the 4-bit layers


def test_four_bit_path_runs_on_cpu(tiny_model, tiny_tokenizer, tmp_path):
    from transformers import LlamaForCausalLM

    from ctxdistill.models import load_model

    # bitsandbytes quantises in blocks of 64: widen the tiny model to fit
    config = copy.deepcopy(tiny_model.config)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "wide")
    tiny_tokenizer.save_pretrained(tmp_path / "wide")
    base, tok = load_model(str(tmp_path / "wide"), quantize="4bit", device="cpu")
    assert any("4bit" in type(m).__name__ for m in base.modules())
    model = train._setup_model(train.TrainConfig(lora_r=4, lora_alpha=8), base, seed=0)
    exs = examples(model, tok, n=4)  # teacher sampling: an eval-mode pass over every 4-bit layer
    assert_four_bit_gradients_match_full_precision(model, tok, exs, config)
    before = lora_state(model)
    result = train.train(
        train.TrainConfig(steps=2, batch_size=2, lr=1e-2, eval_every=0, warmup_steps=0, keep_best=False),
        model,
        tok,
        SYSTEM,
        exs,
        exs[:2],
        run_dir=tmp_path / "run",
    )
    assert math.isfinite(result["heldout_kl_after"])
    assert any(not torch.equal(p, before[n]) for n, p in lora_state(model).items())


# --------------------------------------------------------------------------- the job, through the store


def test_no_accepted_samples_is_a_clear_refusal(workspace):
    from ctxdistill.store import Store

    store = Store(workspace)
    cid = save_version(store)
    with pytest.raises(train.TrainError, match="no accepted samples"):
        train.run(train.TrainConfig(constitution_id=cid, data="accepted"), store, workspace / "runs" / "1")


@pytest.mark.integration
def test_short_run_on_the_embedded_model_lowers_held_out_kl(workspace, tmp_path):
    from ctxdistill.store import Store

    store = Store(workspace)
    cid = save_version(store)
    logged = []
    cfg = train.TrainConfig(
        constitution_id=cid,
        max_prompts=16,
        eval_prompts=6,
        sample_tokens=16,
        steps=6,
        batch_size=8,
        eval_every=3,
        checkpoint_every=0,
        quantize="none",
    )
    result = train.run(cfg, store, tmp_path / "run", train.Hooks(log=lambda v, s: logged.append((s, v))))
    heldout = [v["heldout_kl"] for _, v in logged if "heldout_kl" in v]
    assert len(heldout) == 3 and heldout[-1] < heldout[0] * 0.9
    assert result["heldout_kl_after"] < result["heldout_kl_before"]
    assert json.loads((tmp_path / "run" / "adapter" / adapters.RUN_FILE).read_text())["constitution_id"] == cid


TINY_FLAGS = [
    "--quantize",
    "none",
    "--steps",
    "4",
    "--max-prompts",
    "8",
    "--sample-tokens",
    "6",
    "--eval-prompts",
    "4",
    "--batch-size",
    "4",
    "--eval-every",
    "2",
    "--json",
]


def test_cli_train_prints_the_run_and_held_out_kl(workspace, tiny_checkpoint):
    pirate = ("--constitution", "assets/constitutions/pirate.yaml", "--model", str(tiny_checkpoint))
    out = run_cli(workspace, "train", *pirate, *TINY_FLAGS, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["run"] == result["job_id"] and result["heldout_kl_after"] <= result["heldout_kl_before"]
    bad = run_cli(workspace, "train", *pirate, "--data", "accepted")
    assert bad.returncode == 2 and "no accepted samples" in bad.stderr


def test_accelerate_launch_two_cpu_processes(workspace, tiny_checkpoint):
    """Data-parallel on two CPU processes (gloo): both train their half, the gradients are averaged."""
    import shutil
    import sys
    from pathlib import Path

    launcher = Path(sys.executable).with_name("accelerate")
    assert launcher.exists() or shutil.which("accelerate")
    # --multi_gpu picks the torchrun launcher; without a GPU every process trains on the CPU over gloo
    launch = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    pirate = ("--constitution", "assets/constitutions/pirate.yaml", "--model", str(tiny_checkpoint))
    out = run_cli(workspace, "train", *pirate, *TINY_FLAGS, timeout=400, launcher=tuple(launch))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert result["processes"] == 2 and math.isfinite(result["heldout_kl_after"])


def test_worker_killed_is_marked_failed_and_resumes_from_its_checkpoint(workspace, tiny_checkpoint):
    import os
    import signal
    import time

    from ctxdistill import jobs
    from ctxdistill.store import Store

    store = Store(workspace)
    cid = save_version(store)
    cfg = train.TrainConfig(
        constitution_id=cid,
        model=str(tiny_checkpoint),
        quantize="none",
        steps=40,
        max_prompts=8,
        sample_tokens=6,
        eval_prompts=2,
        batch_size=2,
        eval_every=0,
        checkpoint_every=2,
    )
    job_id = jobs.submit(store, "train", cfg.to_dict())
    run_dir = store.runs_dir / str(job_id)
    deadline = time.time() + 180
    while adapters.latest_checkpoint(run_dir) is None:
        assert time.time() < deadline and store.get_job(job_id)["state"] in ("queued", "running"), store.get_job(job_id)
        time.sleep(0.2)
    os.kill(store.get_job(job_id)["pid"], signal.SIGKILL)
    killed_at = time.time()
    while jobs.get(store, job_id)["state"] == "running":
        time.sleep(0.2)
    assert jobs.get(store, job_id)["state"] == "failed" and time.time() - killed_at < 10
    kept = int(adapters.latest_checkpoint(run_dir).name.split("-")[1])
    jobs.resume(store, job_id)
    job = jobs.wait(store, job_id, timeout=300)
    assert job["state"] == "done", job["error"]
    assert job["result"]["step"] == 40
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from step-{kept:06d}" in log


def test_stop_while_sampling_the_teacher_is_honoured_and_keeps_the_answers(workspace, tiny_checkpoint):
    """Stop between two generation steps of teacher sampling: the job ends cancelled (not killed
    after the grace period), the finished batches are kept, and a resume samples only the rest."""
    import json
    import time

    from ctxdistill import jobs
    from ctxdistill.store import Store

    store = Store(workspace)
    cid = save_version(store)
    # 64 answers a batch: 160 prompts make three batches of 64-token answers
    cfg = train.TrainConfig(
        constitution_id=cid,
        model=str(tiny_checkpoint),
        quantize="none",
        steps=2,
        max_prompts=160,
        sample_tokens=64,
        eval_prompts=2,
        batch_size=4,
        eval_every=0,
        checkpoint_every=0,
    )
    job_id = jobs.submit(store, "train", cfg.to_dict())
    partial = store.runs_dir / str(job_id) / "data.partial.json"
    deadline = time.time() + 240
    # the held-out answers are sampled first; then the first batch of training answers is done and kept
    while not (partial.is_file() and "train" in json.loads(partial.read_text())):
        job = store.get_job(job_id)
        assert time.time() < deadline and job["state"] in ("queued", "running"), job
        time.sleep(0.05)
    assert "tokens" in store.get_job(job_id)["message"]  # the phase reports its own counter
    jobs.cancel(store, job_id, grace_s=30)
    asked = time.time()
    job = jobs.wait(store, job_id, timeout=60)
    assert job["state"] == "cancelled" and "killed" not in (job["message"] or ""), job
    assert time.time() - asked < 20
    kept = len(json.loads(partial.read_text())["train"]["done"])
    assert 64 <= kept < 160
    log = (store.runs_dir / str(job_id) / "log.txt").read_text()
    assert "phase: sampling the teacher's training answers" in log and f"{kept} answers kept" in log
    jobs.resume(store, job_id)
    job = jobs.wait(store, job_id, timeout=300)
    assert job["state"] == "done", job["error"]
    assert (
        f"{kept} train answers kept from the previous attempt" in (store.runs_dir / str(job_id) / "log.txt").read_text()
    )
    assert not partial.exists()


def _data_parallel_worker(rank: int, checkpoint: str, port: int, out: str) -> None:
    """One of two gloo processes: the student's backward through ``data_parallel`` on this rank's own
    batch; writes the adapter's gradients as they are after the backward."""
    import os

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = train._setup_model(
        train.TrainConfig(lora_r=4, lora_alpha=8), AutoModelForCausalLM.from_pretrained(checkpoint), seed=0
    )
    pair = engine.TeacherStudent(model, tok, "Be brief.")
    pair.data_parallel()
    batch = [engine.Example(PROMPTS[rank], tok.encode(" yes no maybe", add_special_tokens=False))]
    train.backward_batch(pair, train.TrainConfig(loss="sft"), batch, scale=2.0)  # DDP averages: x2 makes a sum
    torch.save({n: p.grad for n, p in model.named_parameters() if p.requires_grad}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_data_parallel_backward_sums_both_processes_gradients(tiny_checkpoint, tiny_tokenizer, tmp_path):
    import socket

    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_data_parallel_worker, args=(str(tiny_checkpoint), port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # the same two batches in one process, one backward each, gradients accumulated
    model = train._setup_model(
        train.TrainConfig(lora_r=4, lora_alpha=8), AutoModelForCausalLM.from_pretrained(tiny_checkpoint), seed=0
    )
    pair = engine.TeacherStudent(model, tiny_tokenizer, "Be brief.")
    for rank in range(2):
        train.backward_batch(
            pair,
            train.TrainConfig(loss="sft"),
            [engine.Example(PROMPTS[rank], tiny_tokenizer.encode(" yes no maybe", add_special_tokens=False))],
            1.0,
        )
    want = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert want and set(got[0]) == set(want)
    for n, g in want.items():
        assert torch.allclose(got[0][n], got[1][n]) and torch.allclose(got[0][n], g, atol=1e-6), n


def test_data_parallel_refuses_an_adapter_outside_the_decoder(tiny_model, tiny_tokenizer):
    model = train._setup_model(
        train.TrainConfig(lora_r=4, lora_alpha=8, target_modules="q_proj,lm_head"), copy.deepcopy(tiny_model), seed=0
    )
    with pytest.raises(engine.EngineError, match="lm_head"):
        engine.TeacherStudent(model, tiny_tokenizer, "Be brief.").data_parallel()
