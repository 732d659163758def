"""Every loss and score on tensors: pure functions, no model and no loop state.

* ``kl_per_token`` — forward KL(teacher || student) over the vocabulary at each position, with its
  gradient in closed form (``_ForwardKL``).
* ``ce_per_token`` — cross-entropy of each target token.
* ``token_losses`` — the loss of a run (``kl``, ``sft`` or ``mix``) per position.
* ``answer_mask`` — which positions of right-aligned rows are answer tokens.
* ``chunked_loss`` — the sums of those terms over N answer positions from final hidden states,
  the full-vocabulary logits built ``chunk`` positions at a time; ``answer_terms`` — the same terms
  per position, split by answer (an evaluation's per-token scores).
* ``gap_closed`` — 1 - KL(teacher || student) / KL(teacher || base).

Shapes are in each docstring; ``tests/test_losses.py`` checks each on toy tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _ForwardKL(torch.autograd.Function):
    """KL(p || q) = sum p (log p - log q) per position, with its gradient in closed form:
    d/d student_logits = q - p. Autograd through log_softmax would take five passes over the
    (positions, vocabulary) tensors and three temporaries for the same result; this takes three
    in place. The teacher gets no gradient (it is frozen)."""

    @staticmethod
    def forward(ctx, teacher_logits, student_logits):
        log_p = F.log_softmax(teacher_logits.float(), dim=-1)
        log_q = F.log_softmax(student_logits.float(), dim=-1)
        p = log_p.exp()
        kl = log_p.sub_(log_q).mul_(p).sum(-1)
        ctx.save_for_backward(p, log_q)
        ctx.student_dtype = student_logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad):
        p, log_q = ctx.saved_tensors
        return None, log_q.exp_().sub_(p).mul_(grad.unsqueeze(-1)).to(ctx.student_dtype)


def kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Forward KL(teacher || student) over the vocabulary at each position: (..., V) -> (...),
    differentiable in the student's logits."""
    return _ForwardKL.apply(teacher_logits, student_logits)


def ce_per_token(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target token: (..., V), (...) -> (...)."""
    return F.cross_entropy(student_logits.float().flatten(0, -2), targets.flatten(), reduction="none").view(
        targets.shape
    )


def token_losses(loss: str, student_logits, teacher_logits=None, targets=None, alpha: float = 0.5) -> dict:
    """Per-position loss terms: {"loss", and "kl" and/or "ce" where computed}, each of shape (...)."""
    out = {}
    if loss in ("kl", "mix"):
        out["kl"] = kl_per_token(teacher_logits, student_logits)
    if loss in ("sft", "mix"):
        out["ce"] = ce_per_token(student_logits, targets)
    out["loss"] = {
        "kl": lambda: out["kl"],
        "sft": lambda: out["ce"],
        "mix": lambda: alpha * out["ce"] + (1 - alpha) * out["kl"],
    }[loss]()
    return out


def answer_mask(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) bool mask of the answer positions of right-aligned rows: row i's last lengths[i]
    slots. Prompt tokens and left padding are False, so no loss is taken on them."""
    cols = torch.arange(width)[None, :]
    return cols >= width - torch.tensor(lengths)[:, None]


def _chunk_terms(lm_head, loss, h_student, h_teacher, targets, alpha, chunk, backward_scale):
    """The loss terms of ``chunk`` positions at a time (each detached), the full-vocabulary logits of
    one chunk alive at once; with ``backward_scale`` each chunk's scaled loss is back-propagated into
    a detached copy of ``h_student``, and from there through the model once when all are done."""
    backward = backward_scale is not None and h_student.requires_grad
    hd = h_student.detach().requires_grad_(backward)
    for start in range(0, h_student.shape[0], chunk):
        part = slice(start, start + chunk)
        with torch.no_grad():
            teacher = lm_head(h_teacher[part]) if h_teacher is not None else None
        with torch.enable_grad() if backward else torch.no_grad():
            terms = token_losses(
                loss, lm_head(hd[part]), teacher, targets[part] if targets is not None else None, alpha
            )
            if backward:
                (terms["loss"].sum() * backward_scale).backward()
        yield {name: value.detach() for name, value in terms.items()}
    if backward and hd.grad is not None:
        h_student.backward(hd.grad)


def chunked_loss(
    lm_head,
    loss: str,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float = 0.5,
    chunk: int = 256,
    backward_scale: float | None = None,
) -> dict:
    """Sum of each loss term over N answer positions, from final hidden states (N, H).

    Full-vocabulary logits exist for at most ``chunk`` positions at a time. With ``backward_scale``
    the scaled loss is also back-propagated chunk by chunk into a detached copy of ``h_student``,
    and from there through the model once, so the logits of all positions are never alive together.
    Returns {"loss", "kl"?, "ce"?: float sums, "tokens": N}.
    """
    sums: dict[str, float] = {}
    for terms in _chunk_terms(lm_head, loss, h_student, h_teacher, targets, alpha, chunk, backward_scale):
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.sum())
    sums["tokens"] = int(h_student.shape[0])
    return sums


def answer_terms(
    lm_head,
    loss: str,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor | None,
    targets: torch.Tensor | None,
    lengths: list[int],
    chunk: int = 256,
) -> dict[str, list[list[float]]]:
    """Each loss term at each of N answer positions (N, H states, as ``chunked_loss`` takes them),
    without gradients, split into the answers of ``lengths`` tokens (summing to N): the per-token
    scores of an evaluation. {"loss", "kl"?, "ce"?: [[float] * length per answer]}."""
    parts = list(_chunk_terms(lm_head, loss, h_student, h_teacher, targets, 0.5, chunk, None))
    return {
        name: [row.tolist() for row in torch.split(torch.cat([p[name] for p in parts]).float().cpu(), lengths)]
        for name in (parts[0] if parts else {})
    }


def gap_closed(kl_base: float, kl_student: float) -> float:
    """1 - KL(teacher || student) / KL(teacher || base): 0 = untrained, 1 = the student is the teacher."""
    return 1 - kl_student / kl_base if kl_base and math.isfinite(kl_base) else math.nan
