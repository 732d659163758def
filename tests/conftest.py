"""Shared fixtures: a tiny randomly initialised chat model for fast tests, the embedded model for
integration tests, and a workspace in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Converted model checkpoints are shared by every test session (the GGUF conversion takes ~20 s).
os.environ.setdefault("CTXDISTILL_MODELS", str(REPO / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in memory on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "You are a helpful assistant. Answer briefly and politely.",
        "Arr matey, the sea is wide and the ship is fast.",
        "What is the capital of France? Paris is the capital.",
        "Write a short poem about rain and the sun.",
        "def add(a, b): return a + b",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Llama with random weights and the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The tiny model saved as a local checkpoint directory (for code that loads by path)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (fp32), loaded once per test session."""
    from ctxdistill.models import load_model

    return load_model()


@pytest.fixture
def store(tmp_path):
    """A fresh workspace store; any job worker a test leaves running is cancelled and killed."""
    from ctxdistill import jobs
    from ctxdistill.store import Store

    s = Store(tmp_path / "ws")
    yield s
    for job in s.list_jobs(state=("queued", "running"), limit=None):
        jobs.cancel(s, job["id"], grace_s=0)
        if job["pid"]:
            jobs.kill_worker(job["pid"], job["id"])
    s.close()


def save_version(store, c=None, message: str = "") -> int:
    """A constitution (the pirate example unless ``c``) saved as a version of ``store``; its id."""
    from ctxdistill.constitution import content_hash, load, to_dict

    c = c or load(REPO / "assets/constitutions/pirate.yaml")
    return store.save_constitution(c.name, to_dict(c), content_hash(c), message=message)


def run_cli(workspace, *args: str, timeout: float = 120, launcher: tuple[str, ...] = ()):
    """``python -m ctxdistill.cli ARGS`` in a subprocess on ``workspace``, from the repository's root
    (``launcher`` in place of the interpreter, as ``accelerate launch ...``); its CompletedProcess."""
    import subprocess
    import sys

    env = {**os.environ, "CTXDISTILL_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    command = [*(launcher or (sys.executable,)), "-m", "ctxdistill.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXDISTILL_HOME", str(tmp_path / "ws"))
    return tmp_path / "ws"
