import pytest
import torch

from ctxdistill.sampling import (
    SamplingConfig,
    chat_ids,
    divergence,
    eos_ids,
    generate_rows,
    mean_kl,
    response_logits,
    system_prefix,
)

PROMPTS = ["What is the capital of France?", "Write a poem about rain.", "def add(a, b):", "Hi"]
SYSTEM = "Arr matey, answer like a pirate."


def reference(model, tok, system, prompt, max_new_tokens):
    ids = torch.tensor([chat_ids(tok, prompt, system)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    gen = out[0, ids.shape[1] :].tolist()
    stop = eos_ids(model, tok)
    cut = next((i for i, t in enumerate(gen) if t in stop), len(gen))
    return gen[:cut]


def test_system_prefix_is_prefix_of_every_chat(tiny_tokenizer):
    for system in (SYSTEM, None):
        prefix = system_prefix(tiny_tokenizer, system)
        assert len(prefix) > 3
        for p in PROMPTS:
            assert chat_ids(tiny_tokenizer, p, system)[: len(prefix)] == prefix


def test_batched_greedy_matches_one_at_a_time(tiny_model, tiny_tokenizer):
    rows = [(SYSTEM, p) for p in PROMPTS] + [(None, p) for p in PROMPTS]
    batched = generate_rows(tiny_model, tiny_tokenizer, rows, SamplingConfig(max_new_tokens=12))
    for (system, prompt), got in zip(rows, batched):
        assert got == reference(tiny_model, tiny_tokenizer, system, prompt, 12)


def test_sampling_is_reproducible_per_row(tiny_model, tiny_tokenizer):
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    rows = [(SYSTEM, PROMPTS[0]), (None, PROMPTS[1]), (SYSTEM, PROMPTS[2])]
    together = generate_rows(tiny_model, tiny_tokenizer, rows, cfg, sample_index=[0, 0, 1])
    alone = generate_rows(tiny_model, tiny_tokenizer, rows[2:], cfg, sample_index=[1])
    assert together[2] == alone[0]
    other = generate_rows(tiny_model, tiny_tokenizer, rows[2:], cfg, sample_index=[2])
    assert other[0] != alone[0]


def test_streaming_callback_sees_growing_answers(tiny_model, tiny_tokenizer):
    seen = []
    generate_rows(
        tiny_model,
        tiny_tokenizer,
        [(SYSTEM, "Hi")],
        SamplingConfig(max_new_tokens=5),
        on_token=lambda step, out: seen.append(len(out[0])),
    )
    assert seen == sorted(seen) and seen[-1] <= 5 and len(seen) >= 1


def test_response_logits_match_full_forward(tiny_model, tiny_tokenizer):
    resp = tiny_tokenizer.encode("Paris is the capital.")
    rows = [(SYSTEM, PROMPTS[0], resp), (None, PROMPTS[3], resp[:3])]
    got = response_logits(tiny_model, tiny_tokenizer, rows)
    for (system, prompt, r), logits in zip(rows, got):
        ids = chat_ids(tiny_tokenizer, prompt, system) + r
        with torch.no_grad():
            full = tiny_model(torch.tensor([ids])).logits[0]
        assert torch.allclose(logits, full[len(ids) - len(r) - 1 : -1], atol=1e-4)


def test_divergence_is_zero_for_identical_conditions(tiny_model, tiny_tokenizer):
    default = "You are a helpful assistant."  # what the template inserts when no system is given
    resp = [tiny_tokenizer.encode("Arr matey")] * 2
    kls = divergence(tiny_model, tiny_tokenizer, default, PROMPTS[:2], resp)
    assert max(max(k) for k in kls) < 1e-5
    kls = divergence(tiny_model, tiny_tokenizer, SYSTEM, PROMPTS[:2], resp)
    assert mean_kl(kls) > 0 and len(kls[0]) == len(resp[0])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"max_new_tokens": 5000}, "max new tokens"),
        ({"top_p": 0}, "top-p"),
        ({"n": 0}, "samples"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_sampling_config_rejects_out_of_range(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**kwargs).validate()
