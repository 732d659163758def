"""Every loss and score of losses.py on toy tensors."""

import math

import pytest
import torch

from ctxdistill import losses
from ctxdistill.losses import kl_per_token


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(3, 5, 11)
    assert torch.allclose(losses.token_losses("kl", logits, logits.clone())["loss"], torch.zeros(3, 5), atol=1e-6)


def test_kl_matches_direct_computation():
    t, s = torch.randn(4, 7), torch.randn(4, 7)
    p, q = t.softmax(-1), s.softmax(-1)
    direct = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(losses.token_losses("kl", s, t)["loss"], direct, atol=1e-5)
    assert (direct >= 0).all()


def test_ce_and_mix():
    s, t = torch.randn(6, 9), torch.randn(6, 9)
    y = torch.randint(0, 9, (6,))
    ce = -s.log_softmax(-1)[torch.arange(6), y]
    terms = losses.token_losses("mix", s, t, y, alpha=0.25)
    assert torch.allclose(terms["ce"], ce, atol=1e-5)
    assert torch.allclose(terms["loss"], 0.25 * ce + 0.75 * kl_per_token(t, s), atol=1e-5)
    assert set(losses.token_losses("sft", s, None, y)) == {"ce", "loss"}


def test_answer_mask_excludes_prompt_and_padding():
    mask = losses.answer_mask([2, 4, 0], 4)
    assert mask.tolist() == [[False, False, True, True], [True] * 4, [False] * 4]
    values = torch.arange(12.0).view(3, 4)
    assert values[mask].mean().item() == pytest.approx((2 + 3 + 4 + 5 + 6 + 7) / 6)


def test_chunked_loss_equals_unchunked_and_its_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False).requires_grad_(False)
    h = torch.randn(10, 8, requires_grad=True)
    ht = torch.randn(10, 8)
    y = torch.randint(0, 13, (10,))
    full = losses.token_losses("mix", head(h), head(ht), y, 0.3)["loss"].sum() / 10
    full.backward()
    expected = h.grad.clone()
    h.grad = None
    sums = losses.chunked_loss(head, "mix", h, ht, y, alpha=0.3, chunk=3, backward_scale=1 / 10)
    assert sums["loss"] / 10 == pytest.approx(full.item(), rel=1e-5)
    assert sums["tokens"] == 10
    assert torch.allclose(h.grad, expected, atol=1e-6)


def test_answer_terms_are_the_chunked_terms_per_position_split_by_answer():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False).requires_grad_(False)
    h, ht, y = torch.randn(9, 8), torch.randn(9, 8), torch.randint(0, 13, (9,))
    kl = losses.answer_terms(head, "kl", h, ht, None, [2, 3, 4], chunk=4)
    assert [len(row) for row in kl["kl"]] == [2, 3, 4] and set(kl) == {"kl", "loss"}
    expected = kl_per_token(head(ht), head(h))
    assert torch.allclose(torch.tensor(sum(kl["kl"], [])), expected, atol=1e-6)
    assert sum(sum(kl["kl"], [])) == pytest.approx(losses.chunked_loss(head, "kl", h, ht, None)["kl"], rel=1e-5)
    ce = losses.answer_terms(head, "sft", h, None, y, [9], chunk=2)["ce"]
    assert torch.allclose(torch.tensor(ce[0]), losses.ce_per_token(head(h), y), atol=1e-6)


def test_kl_per_token_properties():
    logits = torch.randn(5, 11)
    assert torch.allclose(kl_per_token(logits, logits), torch.zeros(5), atol=1e-6)
    other = torch.randn(5, 11)
    p, q = logits.softmax(-1), other.softmax(-1)
    direct = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(kl_per_token(logits, other), direct, atol=1e-5)
    assert (kl_per_token(logits, other) >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_per_token_gradient_matches_autograd(dtype):
    teacher, student = torch.randn(2, 7, 50, dtype=dtype), torch.randn(2, 7, 50, dtype=dtype, requires_grad=True)
    weights = torch.rand(2, 7)
    (kl_per_token(teacher, student) * weights).sum().backward()
    reference = student.detach().float().requires_grad_(True)
    p = teacher.float().softmax(-1)
    ((p * (p.log() - reference.log_softmax(-1))).sum(-1) * weights).sum().backward()
    assert student.grad.dtype == dtype
    assert torch.allclose(student.grad.float(), reference.grad, atol=1e-6 if dtype == torch.float32 else 1e-2)
    assert teacher.grad is None


def test_gap_closed():
    assert losses.gap_closed(0.4, 0.1) == pytest.approx(0.75)
    assert losses.gap_closed(0.4, 0.4) == 0 and losses.gap_closed(0.4, 0.0) == 1
    assert math.isnan(losses.gap_closed(0.0, 0.1)) and math.isnan(losses.gap_closed(math.inf, 0.1))
