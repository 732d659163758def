"""The strength dial on the tiny model: the adapter's scale from 0 (the base model) to 1.5, merged
for inference and at export, recorded in the exported adapter's config; bad strengths refused."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from ctxdistill import adapters
from ctxdistill.cli import main
from ctxdistill.store import Store
from tests.test_evaluate import _adapter

IDS = torch.tensor([[3, 4, 5, 6, 7, 8]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.fixture
def adapter(tiny_model, tmp_path):
    _adapter(tiny_model, tmp_path / "adapter", 0.5, constitution="pirate")
    return tmp_path / "adapter"


def test_scale_0_is_the_base_and_1_the_trained_student(tiny_model, adapter):
    base = logits(tiny_model)
    trained = logits(adapters.load_adapter(copy.deepcopy(tiny_model), adapter))
    assert not torch.allclose(trained, base, atol=1e-3)
    assert torch.allclose(logits(adapters.merged_student(tiny_model, adapter, 0.0)), base, atol=1e-5)
    assert torch.allclose(logits(adapters.merged_student(tiny_model, adapter, 1.0)), trained, atol=1e-4)
    half = logits(adapters.merged_student(tiny_model, adapter, 0.5))
    assert not torch.allclose(half, base, atol=1e-3) and not torch.allclose(half, trained, atol=1e-3)
    # the dial on an unmerged adapter, and back to as trained afterwards
    student = adapters.load_adapter(copy.deepcopy(tiny_model), adapter)
    with adapters.scaled(student, 0.5):
        assert torch.allclose(logits(student), half, atol=1e-4)
    assert torch.allclose(logits(student), trained, atol=1e-4)
    assert torch.allclose(logits(tiny_model), base)  # the shared base model is untouched


@pytest.mark.parametrize("bad", [-0.1, 1.51, float("nan"), "strong", None])
def test_a_strength_outside_its_range_is_refused_with_the_range(bad, adapter, tmp_path):
    with pytest.raises(adapters.AdapterError, match=r"from 0 .* to 1\.5|from 0 to 1\.5"):
        adapters.export(adapter, tmp_path / "out", strength=bad)
    assert not (tmp_path / "out").exists()


def test_export_at_a_strength_records_it_and_the_weights_match(tiny_model, tiny_checkpoint, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    at = 1.25
    expected = logits(adapters.merged_student(tiny_model, adapter, at))
    out = adapters.export(adapter, tmp_path / "adapter-out", strength=at)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_alpha"] == pytest.approx(8 * at)
    assert json.loads((out / adapters.RUN_FILE).read_text())["strength"] == at
    assert "| strength | 1.25 " in (out / "README.md").read_text()
    # any peft loader applies the exported adapter at that strength
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_model), str(out))
    assert torch.allclose(logits(loaded), expected, atol=1e-4)

    merged = adapters.export(
        adapter, tmp_path / "merged-out", merged=True, strength=at, model_spec=str(tiny_checkpoint)
    )
    again = AutoModelForCausalLM.from_pretrained(merged)
    reference = adapters.merged_student(tiny_model, adapter, at).state_dict()
    as_trained = adapters.merged_student(tiny_model, adapter, 1.0).state_dict()
    off = {"at": 0.0, "as trained": 0.0}
    for name, weight in again.state_dict().items():  # merged in the policy's precision, saved in bfloat16
        assert torch.allclose(weight.float(), reference[name], atol=2e-2), name
        off["at"] += (weight.float() - reference[name]).abs().sum().item()
        off["as trained"] += (weight.float() - as_trained[name]).abs().sum().item()
    assert off["at"] < off["as trained"] / 3
    assert json.loads((merged / adapters.RUN_FILE).read_text())["strength"] == at
    assert "| strength | 1.25 " in (merged / "README.md").read_text()


def test_cli_exports_a_run_at_a_strength_and_refuses_a_bad_one(
    capsys, tiny_model, tiny_checkpoint, workspace, tmp_path
):
    store = Store(workspace)
    job = store.create_job("train", {"model": str(tiny_checkpoint), "constitution_id": 1}, heavy=True)
    store.update_job(job, state="done")
    _adapter(tiny_model, store.runs_dir / str(job) / "adapter", 0.5)
    store.close()
    out = tmp_path / "exported"
    assert main(["export", "--run", str(job), "--out", str(out), "--strength", "2", "--json"]) == 2
    assert "strength must be from 0 (the base model) to 1.5" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--run", str(job), "--out", str(out), "--strength", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run": job, "path": str(out), "merged": False, "strength": 0.5}
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == pytest.approx(4.0)
    assert main(["export", "--run", "999", "--out", str(tmp_path / "none")]) == 2
    assert "999" in capsys.readouterr().err
    assert main(["export", "--constitution", "1", "--out", str(tmp_path / "s.jsonl"), "--strength", "0.5"]) == 2
    assert "add --run" in capsys.readouterr().err


def test_the_ui_refuses_a_strength_outside_its_range(tmp_path, tiny_model):
    import gradio as gr

    from ctxdistill.ui.app import build_app
    from ctxdistill.ui.common import AppContext
    from tests.test_demo import tab_callback

    ctx = AppContext(home=tmp_path / "ws")
    blocks = build_app(ctx)
    job = ctx.store.create_job("train", {"constitution_id": 1}, heavy=True)
    ctx.store.update_job(job, state="done")
    _adapter(tiny_model, ctx.store.runs_dir / str(job) / "adapter", 0.5)
    request = SimpleNamespace(session_hash="x")
    for name, call in (
        ("single", lambda fn: next(fn({}, "hi", job, 1.6, request, True, 0.7, 0.95, 0, 8, 1))),
        ("restrength", lambda fn: fn("hi", job, -0.5, request, True, 0.7, 0.95, 0, 8, 1)),
    ):
        with pytest.raises(gr.Error, match=r"strength must be from 0 \(the base model\) to 1\.5"):
            call(tab_callback(blocks, "preview", name))
    export = tab_callback(blocks, "distill", "on_export")
    archive, message = export(job, False, 2.0, request)
    assert archive is None and "strength must be from 0 (the base model) to 1.5" in message
    archive, message = export(job, False, 0.5, request)
    assert archive.endswith(".zip") and "strength 0.5" in message
