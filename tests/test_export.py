"""An exported adapter loads elsewhere: its config names the base model by its hub id, and a fresh
process with only peft and transformers loads it by that name (offline: the hub id resolves to the
local copy of the embedded model, as ctxdistill.models resolves the embedded model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ctxdistill import adapters
from ctxdistill.models import HUB_FALLBACK, hub_name, local_checkpoint

FRESH = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
out, resolver = sys.argv[1], json.loads(sys.argv[2])
name = json.load(open(out + "/adapter_config.json"))["base_model_name_or_path"]
base = AutoModelForCausalLM.from_pretrained(resolver.get(name, name))
ids = torch.tensor([[1, 2, 3, 4]])
with torch.no_grad():
    plain = base(ids).logits
    model = PeftModel.from_pretrained(base, out)
    changed = (model(ids).logits - plain).abs().max().item()
print(json.dumps({"name": name, "changed": changed}))
"""


def test_an_exported_adapter_loads_in_a_fresh_process_by_the_name_in_its_config(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    checkpoint = local_checkpoint(None, os.environ["CTXDISTILL_MODELS"])  # the embedded model, converted once
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(checkpoint), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained adapter changes the answers; a fresh one would not
    info = {"base_model": "embedded SmolLM2-135M-Instruct", "quantize": "none", "precision": "fp32"}
    adapters.save_adapter(model, tmp_path / "adapter", info)
    settings = {"loss": "kl", "steps": 80, "lr": 5e-4, "lora_r": 4, "owner": "someone"}
    out = adapters.export(tmp_path / "adapter", tmp_path / "out", model_spec=None, settings=settings)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_FALLBACK == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (out / "README.md").read_text()
    assert "| base model | HuggingFaceTB/SmolLM2-135M-Instruct |" in card and "(none, fp32 compute)" not in card
    listed = json.loads(card.split("## Training settings")[1].split("```json")[1].split("```")[0])
    assert listed == {"loss": "kl", "steps": 80, "lr": 5e-4, "lora_r": 4}  # every setting, not "{}"

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH, str(out), json.dumps({HUB_FALLBACK: checkpoint})],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["name"] == HUB_FALLBACK and loaded["changed"] > 1e-3


def test_a_local_model_has_no_portable_name(tmp_path):
    assert hub_name("embedded") == HUB_FALLBACK
    assert hub_name("someone/model") == "someone/model"
    assert hub_name(str(tmp_path)) is None
