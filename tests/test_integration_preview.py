"""On the embedded SmolLM2-135M: the pirate constitution measurably shifts the model's
next-token distribution and changes its greedy answers.

Threshold: on this model the pirate constitution's mean per-token KL along the teacher's greedy
answers measures 0.3-0.5 nats (DESIGN.md reports 0.36 on a larger set); a bland system prompt
close to the template's default measures an order of magnitude less. 0.15 nats sits well between
the two, and the test also asks for 3x the bland prompt's KL so that it cannot pass by noise.
"""

import pytest

from ctxdistill import constitution as cmod
from ctxdistill.sampling import SamplingConfig, preview

pytestmark = pytest.mark.integration

PROMPTS = [
    "How do I boil an egg?",
    "Give me tips for a job interview.",
    "Explain gravity to a child.",
    "What should I pack for a weekend trip?",
]


def test_pirate_constitution_shifts_distribution_and_answers(smol):
    model, tokenizer = smol
    cfg = SamplingConfig(max_new_tokens=24)
    pirate = preview(model, tokenizer, cmod.render(cmod.load("assets/constitutions/pirate.yaml")), PROMPTS, cfg)
    bland = preview(model, tokenizer, "You are a helpful AI assistant.", PROMPTS, cfg)
    assert pirate.mean_kl > 0.15
    assert pirate.mean_kl > 3 * bland.mean_kl
    differ = sum(a != b for a, b in zip(pirate.prompted, pirate.unprompted))
    assert differ >= 3
    voice = sum(any(w in a[0].lower() for w in ("matey", "ye ", "arr", "aye")) for a in pirate.prompted)
    assert voice >= 2
