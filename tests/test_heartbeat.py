"""The heartbeat keeps a job's line moving through the calls that report nothing of their own: the
libraries' import (modules loaded) and a model's load (weights read, through transformers' tqdm hook)."""

import sys
import types
from functools import partial

import pytest
from transformers.utils import logging as hf_logging

from ctxdistill import heartbeat
from ctxdistill.store import Store


@pytest.fixture
def beat(tmp_path, monkeypatch):
    monkeypatch.setattr(heartbeat, "QUIET_S", 0.0)
    store = Store(tmp_path)
    return heartbeat.Heartbeat(store, store.create_job("generate", {}))


def test_line_counts_the_weights_transformers_reads(beat):
    beat.said("loading the model (4-bit NF4)")
    assert beat.loading_line() is None  # nothing moved since the job said it
    lines = []
    with heartbeat.weights_counted():
        for i in hf_logging.tqdm(range(5), desc="Loading weights"):
            if i == 2:
                lines.append(beat.loading_line())
        for i in hf_logging.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            lines.append(beat.loading_line())
        assert list(hf_logging.tqdm(iter(range(3)), desc="unsized")) == [0, 1, 2]  # left as it is
    assert lines[0].startswith("loading the model (4-bit NF4) · ")
    assert lines[0].endswith(" · loading weights 3/5")
    assert lines[1].endswith(" · converting and de-quantizing gguf tensors 1/3")
    assert beat.loading_line() is None  # the load ended: nothing moves
    assert hf_logging._tqdm_hook is None  # the hook is taken off again


def test_line_counts_modules_and_waits_for_quiet(beat, monkeypatch):
    beat.said("loading the libraries")
    before = len(sys.modules)
    monkeypatch.setitem(sys.modules, "ctxdistill_test_fake_module", types.ModuleType("fake"))
    assert beat.loading_line() == f"loading the libraries · {before + 1} Python modules loaded"
    monkeypatch.setattr(heartbeat, "QUIET_S", 60.0)
    beat.said("step 1/80")
    monkeypatch.setitem(sys.modules, "ctxdistill_test_fake_module_2", types.ModuleType("fake"))
    assert beat.loading_line() is None  # the job spoke less than QUIET_S ago: its own line stands


def test_running_job_line_moves_while_the_thread_beats(beat, monkeypatch):
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.01)
    beat.store.update_job(beat.job_id, state="running")
    beat.said("loading the libraries")
    monkeypatch.setitem(sys.modules, "ctxdistill_test_fake_module_3", types.ModuleType("fake"))
    beat.start()
    try:
        for _ in range(500):
            if "modules loaded" in (beat.store.get_job(beat.job_id)["message"] or ""):
                break
            beat._done.wait(0.01)
    finally:
        beat.stop()
    job = beat.store.get_job(beat.job_id)
    assert job["message"].startswith("loading the libraries · ") and job["heartbeat_at"]


def test_line_counts_the_layers_of_the_prompts_pass(beat, tiny_model, tiny_tokenizer):
    from ctxdistill.sampling import SamplingConfig, decoder_of, generate_rows

    layers = decoder_of(tiny_model).layers
    rows = [("Be brief.", "hi"), ("Be brief.", "hi!")]
    sample = partial(generate_rows, tiny_model, tiny_tokenizer, rows, SamplingConfig(max_new_tokens=3))
    sample()  # what it imports on first use is imported
    beat.said("sampling 0/2 prompts")
    lines = []
    # what the heartbeat would write while the last layer of each pass runs
    hook = layers[-1].register_forward_hook(lambda *_: lines.append(beat.loading_line()))
    try:
        sample()
    finally:
        hook.remove()
    n = len(layers)
    # the constitution's prefix, then the prompts: each pass counted to its last layer
    assert lines[:2] == [f"sampling 0/2 prompts · reading the prompts, layer {n}/{n}"] * 2
    assert lines[2:] == [None, None]  # the sampling steps themselves are not counted: they report
    assert beat.loading_line() is None
