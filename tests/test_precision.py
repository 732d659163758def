"""The precision policy as a pure function of a described device, applied by every loader; the
``info`` command; and a foreground CLI run stopped by SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctxdistill.precision import Hardware, choose
from tests.conftest import save_version

REPO = Path(__file__).resolve().parent.parent

AMPERE = Hardware(device="cuda", gpu_name="A100", gpu_bf16=True)
T4 = Hardware(device="cuda", gpu_name="Tesla T4", gpu_bf16=False)
AMX = Hardware(cpu_capability="AVX512", cpu_flags=("amx_bf16", "avx512_bf16"))
AVX512_BF16 = Hardware(cpu_capability="AVX512", cpu_flags=("avx512_bf16",))
AVX512_ONLY = Hardware(cpu_capability="AVX512")
AVX2 = Hardware(cpu_capability="AVX2")
AMX_UNDER_AVX2_PROFILE = Hardware(cpu_capability="AVX2", cpu_flags=("amx_bf16", "avx512_bf16"), onednn_isa="AVX2")
AMX_ONEDNN_CAPPED = Hardware(cpu_capability="AVX512", cpu_flags=("amx_bf16",), onednn_isa="avx512_core")
ARM_BF16 = Hardware(cpu_capability="DEFAULT", cpu_flags=("bf16",))


@pytest.mark.parametrize(
    "hw, quantize, compute",
    [
        (AMPERE, "4bit", "bf16"),
        (T4, "4bit", "fp16"),
        (AMX, "4bit", "bf16"),
        (AVX512_BF16, "4bit", "bf16"),
        (AVX512_ONLY, "none", "fp32"),
        (AVX2, "none", "fp32"),
        (AMX_UNDER_AVX2_PROFILE, "none", "fp32"),
        (AMX_ONEDNN_CAPPED, "none", "fp32"),
        (ARM_BF16, "4bit", "bf16"),
    ],
)
def test_policy_per_device(hw, quantize, compute):
    p = choose(hw)
    assert (p.quantize, p.compute) == (quantize, compute)
    assert p.reason


def test_overrides_are_named_in_the_reason():
    p = choose(AVX2, quantize="4bit")
    assert (
        (p.quantize, p.compute) == ("4bit", "fp32") and "--quantize 4bit" in p.reason and "no native bf16" in p.reason
    )
    p = choose(AMX, precision="fp32")
    assert (p.quantize, p.compute) == ("4bit", "fp32") and "--precision fp32" in p.reason
    assert choose(AMPERE, quantize="none", precision="fp16").dtype == torch.float16


@pytest.mark.parametrize(
    "hw, quantize, params, said",
    [
        (AMX, "auto", 134_515_008, True),  # the embedded model: the reason says what 4-bit costs it
        (AMPERE, "auto", 999_999_999, True),
        (AMPERE, "auto", 1_000_000_000, False),
        (AMX, "auto", None, False),  # size not known
        (AVX2, "auto", 134_515_008, False),  # no 4-bit, nothing to say
        (AVX2, "4bit", 134_515_008, True),
        (AMX, "none", 134_515_008, False),
    ],
)
def test_the_reason_says_what_4bit_costs_a_small_model(hw, quantize, params, said):
    p = choose(hw, quantize=quantize, params=params)
    assert p == choose(hw, quantize=quantize) if not said else p.quantize == "4bit"
    assert ("costs the model capability, which --quantize none keeps" in p.reason) == said
    assert ("at 135M parameters" in p.reason) == (said and params == 134_515_008)


def test_load_model_names_the_cost_of_4bit_for_a_small_model(monkeypatch, tiny_checkpoint):
    from ctxdistill import precision
    from ctxdistill.models import load_model

    monkeypatch.setattr(precision, "detect", lambda device=None, probe_bitsandbytes=True: AVX2)
    model, _ = load_model(str(tiny_checkpoint), quantize="4bit")
    chosen = model.ctxdistill_precision
    assert chosen.quantize == "4bit" and "costs the model capability" in chosen.reason


def test_param_count_reads_the_safetensors_headers(tmp_path, tiny_checkpoint):
    import shutil

    from transformers import AutoModelForCausalLM

    from ctxdistill.models import param_count

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert param_count(str(tiny_checkpoint)) == sum(p.numel() for p in model.parameters())
    assert param_count("nobody-has/this-model") is None  # a hub id not in the cache: unknown, no network
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    assert param_count(str(broken)) is None


def test_no_bitsandbytes():
    hw = Hardware(device="cuda", gpu_bf16=True, bitsandbytes=False)
    assert choose(hw).quantize == "none" and "bitsandbytes" in choose(hw).reason
    with pytest.raises(ValueError, match="bitsandbytes"):
        choose(hw, quantize="4bit")


@pytest.mark.parametrize("kwargs", [{"quantize": "8bit"}, {"precision": "fp8"}])
def test_unknown_choices(kwargs):
    with pytest.raises(ValueError, match="must be one of"):
        choose(AVX2, **kwargs)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_load_model_follows_the_policy(tiny_checkpoint, precision, dtype):
    from ctxdistill.models import load_model

    model, _ = load_model(str(tiny_checkpoint), quantize="none", precision=precision)
    assert model.get_input_embeddings().weight.dtype == dtype
    assert model.ctxdistill_precision.compute == precision


def test_every_model_load_goes_through_the_policy():
    """Only models.py calls from_pretrained for a causal LM (load_model, and the one-time GGUF
    conversion); any other path would load a model around the precision policy."""
    offenders = []
    for path in (REPO / "ctxdistill").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"AutoModel\w*\.from_pretrained|ForCausalLM\.from_pretrained", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert offenders and all(o.startswith("ctxdistill/models.py") for o in offenders), offenders


def test_train_records_the_precision(tmp_path, tiny_checkpoint):
    from ctxdistill import train
    from ctxdistill.store import Store

    store = Store(tmp_path / "ws")
    cid = save_version(store)
    cfg = train.TrainConfig(
        constitution_id=cid,
        model=str(tiny_checkpoint),
        steps=2,
        batch_size=2,
        max_prompts=4,
        eval_prompts=2,
        sample_tokens=4,
        eval_every=0,
        precision="fp32",
        quantize="none",
    )
    result = train.run(cfg, store, tmp_path / "run")
    assert result["precision"] == "fp32" and result["quantize"] == "none" and result["precision_reason"]
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "fp32 compute" in card and "--precision fp32" in card


def test_fp16_training_uses_a_grad_scaler(tmp_path, tiny_checkpoint):
    """fp16 compute (GPUs without bf16) trains through a gradient scaler; on the CPU too."""
    from ctxdistill import train
    from ctxdistill.store import Store

    store = Store(tmp_path / "ws")
    cid = save_version(store)
    cfg = train.TrainConfig(
        constitution_id=cid,
        model=str(tiny_checkpoint),
        steps=3,
        batch_size=2,
        max_prompts=4,
        eval_prompts=2,
        sample_tokens=4,
        eval_every=0,
        precision="fp16",
        quantize="none",
        checkpoint_every=1,
    )
    result = train.run(cfg, store, tmp_path / "run")
    assert result["precision"] == "fp16" and result["heldout_kl_after"] == result["heldout_kl_after"]
    from ctxdistill.adapters import latest_checkpoint

    state = torch.load(latest_checkpoint(tmp_path / "run") / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0


def test_info_json(capsys, tmp_path, tiny_checkpoint):
    from ctxdistill.cli import main

    assert main(["info", "--json", "--workspace", str(tmp_path / "ws"), "--model", str(tiny_checkpoint)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {
        "device",
        "cpu_capability",
        "cpu_bf16_flags",
        "native_bf16",
        "cores",
        "torch_threads",
        "versions",
        "precision",
        "calibration",
        "default_run",
    } <= set(out)
    assert {"torch", "transformers", "peft", "bitsandbytes", "gradio"} <= set(out["versions"])
    assert out["precision"]["reason"] and out["calibration"]["step_s"] > 0
    seconds = out["default_run"]["seconds"]
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"))
    assert out["default_run"]["n_train"] > 0 and seconds["training"] > 0


def test_info_refuses_unknown_precision(capsys):
    from ctxdistill.cli import main

    assert main(["info", "--no-measure", "--precision", "fp8"]) == 2
    assert "precision must be one of" in capsys.readouterr().err


def test_sigterm_of_a_foreground_run_cancels_it(tmp_path, tiny_checkpoint):
    """``timeout N ctxdistill train ...``: the job is cancelled and resumable, and no worker is left."""
    from ctxdistill import jobs
    from ctxdistill.store import Store

    ws = tmp_path / "ws"
    env = {**os.environ, "CTXDISTILL_WORKER_PRIORITY": "normal"}
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctxdistill.cli",
            "train",
            "--workspace",
            str(ws),
            "--constitution",
            str(REPO / "assets/constitutions/pirate.yaml"),
            "--model",
            str(tiny_checkpoint),
            "--steps",
            "100000",
            "--batch-size",
            "2",
            "--max-prompts",
            "4",
            "--eval-prompts",
            "2",
            "--sample-tokens",
            "4",
            "--eval-every",
            "0",
            "--checkpoint-every",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = Store(ws)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = store.list_jobs(limit=1)
        if job and job[0]["state"] == "running" and job[0]["progress_done"] > 0:
            break
        time.sleep(0.2)
    else:
        cli.kill()
        pytest.fail(f"the run did not start: {cli.communicate()}")
    job_id, pid = job[0]["id"], job[0]["pid"]
    cli.send_signal(signal.SIGTERM)
    _, err = cli.communicate(timeout=90)
    assert cli.returncode == 130, err
    job = store.get_job(job_id)
    assert job["state"] == "cancelled", job
    assert not jobs.worker_alive(pid, job_id)
    from ctxdistill.adapters import latest_checkpoint

    assert latest_checkpoint(ws / "runs" / str(job_id)) is not None  # resumable from where it stopped
    assert "resume" in err and "Traceback" not in err


def test_distill_form_shows_the_precision_and_the_time(tmp_path, tiny_checkpoint):
    from ctxdistill.train import TrainConfig
    from ctxdistill.ui.common import AppContext
    from ctxdistill.ui.distill import FORM, estimate_text, precision_text

    ctx = AppContext(home=tmp_path / "ws", model_spec=str(tiny_checkpoint))
    assert "Precision on this machine" in precision_text(ctx, "auto", "auto")
    fp16 = precision_text(ctx, "none", "fp16")
    assert "fp16 compute" in fp16 and "--precision fp16" in fp16
    assert "must be one of" in precision_text(ctx, "8bit", "auto")
    values = {name: getattr(TrainConfig(), name) for name in FORM}
    assert "press *Estimate the time*" in estimate_text(ctx, values, "default", "", measure=False)
    text = estimate_text(ctx, {**values, "steps": 40.0}, "default", "", measure=True)
    assert "Time on this machine" in text and "training" in text and "40 steps" in text
    assert "batch size must be" in estimate_text(ctx, {**values, "batch_size": 0}, "default", "", measure=False)


def test_data_form_predicts_the_sampling_time(tmp_path, tiny_checkpoint):
    from ctxdistill.ui.common import AppContext
    from ctxdistill.ui.data import sampling_estimate

    ctx = AppContext(home=tmp_path / "ws", model_spec=str(tiny_checkpoint))
    assert "press *Estimate the time*" in sampling_estimate(ctx, "", "default", "", 0, 1, 32, measure=False)
    text = sampling_estimate(ctx, "", "default", "", 10, 2, 32, measure=True)
    assert "Time on this machine" in text and "10 prompts" in text and "30 answers" in text


def test_a_dpo_run_records_the_precision_it_ran_in(tmp_path, tiny_checkpoint):
    """A preference run loads the model as the policy decides on this machine, and records that choice,
    not the one its start run recorded (which may have trained on another machine)."""
    from ctxdistill import dpo, jobs, train
    from ctxdistill.adapters import RUN_FILE, run_adapter
    from ctxdistill.store import Store

    store = Store(tmp_path / "ws")
    cid = save_version(store)
    small = dict(model=str(tiny_checkpoint), precision="fp32", quantize="none")
    start = store.create_job(
        "train",
        train.TrainConfig(
            constitution_id=cid,
            steps=1,
            batch_size=2,
            max_prompts=2,
            eval_prompts=2,
            sample_tokens=4,
            eval_every=0,
            **small,
        ).to_dict(),
    )
    jobs.run_inline(store, start)
    kept = run_adapter(store, start) / RUN_FILE
    elsewhere = {
        **json.loads(kept.read_text()),
        "quantize": "4bit",
        "precision": "bf16",
        "precision_reason": "elsewhere",
    }
    kept.write_text(json.dumps(elsewhere))  # as if the start run had trained on a machine with bf16
    store.add_pairs(
        [{"constitution_id": cid, "prompt": "Hi", "chosen": "Arr, hi", "rejected": "Hi", "source": "checks"}]
    )
    store.set_pairs_status([p["id"] for p in store.list_pairs()], "accepted")
    cfg = dpo.DPOConfig(from_run=start, steps=1, batch_size=1, eval_every=0, eval_prompts=1, checkpoint_every=0)
    run = store.create_job("dpo", cfg.to_dict())
    jobs.run_inline(store, run)
    job = store.get_job(run)
    assert job["state"] == "done", job["error"]
    result = job["result"]
    assert (result["quantize"], result["precision"]) == ("none", "fp32") and result["precision_reason"] != "elsewhere"
    store.close()
