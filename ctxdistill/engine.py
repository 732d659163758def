"""The teacher and the student on one model: the forward passes of a batch of answers under both
conditions, teacher sampling, and the held-out KL.

The teacher is the base weights (adapter disabled) with the constitution as system prompt; the
student is base + adapter with the chat template's default system prompt. The teacher is frozen,
so the key/value cache of its constitution prefix is computed once per run (``Prefixes``) and its
final hidden states along each answer can be kept from the pass that sampled it. Used by the
training loop (train.py) and by the evaluation (evaluate.py) for base, teacher and students.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass

import torch

from .losses import answer_mask, chunked_loss
from .sampling import Prefixes, SamplingConfig, decoder_of, generate_rows, left_padded, split_rows, suffix_inputs


class EngineError(RuntimeError):
    """A batch the two conditions cannot be computed for (the tokenizer merged across the system turn),
    or a model that cannot train data-parallel."""


@dataclass
class Example:
    """One answer to train or evaluate on: the prompt and the answer's token ids.

    ``prompt`` is what the teacher sees after the constitution: one user turn, or a conversation
    (user/assistant turns ending with a user turn) whose last answer is ``answer``. ``seen`` is what
    the student sees instead, where that differs (the prompt wrapped in an override attempt): the
    target stays the teacher's distribution on ``prompt``. ``own``: the answer is the student's own
    sample (on-policy), so the teacher's states along it are not kept."""

    prompt: str | list[dict]
    answer: list[int]
    seen: str | list[dict] | None = None
    own: bool = False

    @property
    def student_input(self) -> str | list[dict]:
        return self.prompt if self.seen is None else self.seen

    @property
    def key(self) -> tuple:
        """The teacher cache's key: the teacher's input and the answer."""
        prompt = self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt, sort_keys=True)
        return prompt, tuple(self.answer)


def _condition(tokenizer, system, examples, prompts: list[str]):
    """(prefix ids, suffix ids per prompt) for one condition of the chat template."""
    prefix_ids, _, suffixes = split_rows(tokenizer, [(system, p) for p in prompts], examples)
    return prefix_ids[0], suffixes


def _hidden(model, prefixes: Prefixes, seqs: list[list[int]], pad_id: int, width: int, body=None) -> torch.Tensor:
    """Final hidden states (B, width, H) at the positions that predict the last ``width`` tokens of
    each left-padded sequence, after the cached prefix; ``body``: the module that runs the
    decoder (``decoder_of(model)`` or its data-parallel wrapper)."""
    ids, _, attention, positions = suffix_inputs(prefixes, [0] * len(seqs), seqs, pad_id)
    device = model.device
    out = (decoder_of(model) if body is None else body)(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        cache=prefixes.cache_for(len(seqs)) if prefixes.total else None,
        use_cache=bool(prefixes.total),
    )
    return out.last_hidden_state[:, -width - 1 : -1]


class _PrefixRow:
    """Stands in for the key/value cache of a forward pass whose row 0 holds a prefix that the
    other rows share: each layer's attention sees row 0's last ``length`` keys and values before
    every row's own (the layers hand their keys and values to ``update`` as they would to a cache)."""

    def __init__(self, length: int):
        self.length = length

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        def widen(t):
            return torch.cat([t[:1, :, t.shape[2] - self.length :].expand(t.shape[0], -1, -1, -1), t], dim=2)

        return widen(keys), widen(values)


def _hidden_after_shared_prefix(
    model, body, prefix: list[int], seqs: list[list[int]], pad_id: int, width: int
) -> torch.Tensor:
    """As ``_hidden``, for rows that all follow ``prefix``, which is encoded as an extra row of the
    same forward pass: the rows attend to its keys and values, and gradients flow back into the
    weights that encoded it. One pass instead of a prefix pass and a batch pass: on the CPU a pass
    costs per operation as much as per token, and a pass of its own cost a 24-token prefix a third
    of the time of a batch of eight rows."""
    if not prefix:
        return _hidden(model, Prefixes(model, [[]]), seqs, pad_id, width, body)
    span = len(prefix)
    # row 0 is the prefix, from position 0; the other rows continue after it
    ids, own, positions = left_padded([prefix] + seqs, pad_id, [0] + [span] * len(seqs))
    own, cols = own.bool(), ids.shape[1]
    query, key = torch.arange(cols)[:, None], torch.arange(cols)[None, :]
    # a query sees its row's earlier real tokens, and itself (so a padding query is never left
    # with nothing to attend to); rows 1.. see the prefix, row 0 (the prefix itself) does not
    allowed = ((key <= query)[None] & own[:, None, :]) | (key == query)[None]
    sees_prefix = torch.ones((len(ids), cols, span), dtype=torch.bool)
    sees_prefix[0] = False
    allowed = torch.cat([sees_prefix, allowed], dim=2)[:, None]
    dtype, device = model.get_input_embeddings().weight.dtype, model.device
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    out = body(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=_PrefixRow(span),
        use_cache=False,
    )
    return out.last_hidden_state[1:, -width - 1 : -1]


def adapters_off(model):
    """The base model's weights: every adapter disabled (a model without adapters is the base already)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


class TeacherStudent:
    """The tensors of one batch of answers under both conditions, on one shared model.

    The teacher (base weights, adapter off, constitution in context) does not change while the
    adapter trains, so with ``teacher_cache_mb`` its final hidden states along each answer are
    kept (H numbers per token, not a vocabulary's worth of logits): from the sampling pass that
    wrote the answer (``sample_answers``), else from their first computation; steps and
    evaluations of a kept answer skip the teacher's forward pass."""

    def __init__(self, model, tokenizer, system: str, examples: list[dict] = (), teacher_cache_mb: float = 0):
        self.model, self.tokenizer, self.system, self.examples = model, tokenizer, system, list(examples)
        self.teacher_cache: dict[tuple, torch.Tensor] = {}  # Example.key -> (len(answer), H)
        self._cache_left = int(teacher_cache_mb * 2**20)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        teacher_prefix, _ = _condition(tokenizer, system, self.examples, ["a"])
        # The teacher never changes during a run: its constitution prefix is encoded once, here.
        with self.teacher_mode():
            self.teacher_prefixes = Prefixes(model, [teacher_prefix])
        self.lm_head = model.get_output_embeddings()
        # what runs the student's forward: the decoder, or in a data-parallel run its DDP wrapper
        # (``data_parallel``), whose backward all-reduces the adapter's gradients
        self.body = decoder_of(model)
        # A 16-bit base model (the 4-bit one computes in bf16) runs the float32 adapter in its own
        # precision too (autocast): no float32 copies of every layer's input kept for the backward.
        self.compute_dtype = model.get_input_embeddings().weight.dtype

    def teacher_mode(self):
        return adapters_off(self.model)

    def data_parallel(self) -> None:
        """The student's forward through the decoder in DDP, so that a backward all-reduces the adapter's
        gradients (in buckets, overlapping the backward). Every trainable parameter must sit inside
        the decoder: an adapter on the output layer would train apart on each process."""
        from torch.nn.parallel import DistributedDataParallel

        inside = {id(p) for p in self.body.parameters()}
        outside = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            raise EngineError(
                f"several processes train only adapters inside the decoder; {outside[0]} is outside it "
                "(drop lm_head from --target-modules, or train in one process)"
            )
        device = next(self.body.parameters()).device
        # the buffers (rotary frequencies) are the same everywhere: not broadcast, so that a forward
        # without gradients (the held-out KL, split unevenly between processes) needs no collective
        self.body = DistributedDataParallel(
            self.body, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    def _suffixes(self, batch: list[Example]):
        prefix, teacher = _condition(self.tokenizer, self.system, self.examples, [ex.prompt for ex in batch])
        if prefix != self.teacher_prefixes.ids[0]:
            raise EngineError(
                "the constitution prefix changed between prompts; the tokenizer merges across the system turn"
            )
        student_prefix, student = _condition(self.tokenizer, None, (), [ex.student_input for ex in batch])
        answers = [ex.answer for ex in batch]
        return (
            [t + a for t, a in zip(teacher, answers)],
            student_prefix,
            [s + a for s, a in zip(student, answers)],
            answers,
        )

    def row_lengths(self, examples: list[Example]) -> list[int]:
        """Tokens each answer's rows hold after the cached prefix (its prompt's turn and the answer):
        what a batch is padded to, so what length-grouped batches group by."""
        _, student = _condition(self.tokenizer, None, (), [ex.student_input for ex in examples])
        return [len(s) + len(ex.answer) for s, ex in zip(student, examples)]

    def hidden(self, batch: list[Example], with_teacher: bool = True):
        """(student hidden (N, H), teacher hidden (N, H) or None, targets (N,)) at the answer positions.

        The student's own constant prefix (the template's default system turn) is encoded once per
        batch, with gradients, and shared by its rows instead of being re-encoded in each
        (``_hidden_after_shared_prefix``)."""
        teacher_seqs, student_prefix, student_seqs, answers = self._suffixes(batch)
        width = max(len(a) for a in answers)
        mask = answer_mask([len(a) for a in answers], width)
        targets = torch.zeros(len(batch), width, dtype=torch.long)
        for row, a in enumerate(answers):
            targets[row, width - len(a) :] = torch.tensor(a, dtype=torch.long)
        with torch.autocast(
            self.model.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32
        ):
            h_student = _hidden_after_shared_prefix(
                self.model, self.body, student_prefix, student_seqs, self.pad_id, width
            )
        h_student = h_student[mask.to(self.model.device)]
        h_teacher = self._teacher_hidden(batch, teacher_seqs) if with_teacher else None
        return h_student, h_teacher, targets[mask].to(self.model.device)

    def teacher_hidden(self, batch: list[Example]) -> torch.Tensor:
        """The teacher's hidden states (N, H) at the batch's answer positions (kept ones where there are)."""
        return self._teacher_hidden(batch, self._suffixes(batch)[0])

    def _teacher_hidden(self, batch: list[Example], teacher_seqs: list[list[int]]) -> torch.Tensor:
        """The teacher's hidden states (N, H) at the answer positions, from the cache where it can."""
        keys = [ex.key for ex in batch]
        todo = [row for row, key in enumerate(keys) if key not in self.teacher_cache]
        fresh = {}
        if todo:
            lengths = [len(batch[row].answer) for row in todo]
            width = max(lengths)
            with torch.no_grad(), self.teacher_mode():
                h = _hidden(self.model, self.teacher_prefixes, [teacher_seqs[row] for row in todo], self.pad_id, width)
                h = h[answer_mask(lengths, width).to(self.model.device)]
            for row, part in zip(todo, h.split(lengths)):
                fresh[keys[row]] = part
                if not batch[row].own:  # the student's own samples change every step: not worth keeping
                    self.keep_teacher(batch[row], part)
        return torch.cat([self.teacher_cache.get(key, fresh.get(key)) for key in keys])

    def keep_teacher(self, example: Example, states: torch.Tensor) -> None:
        """Keep the teacher's final hidden states (len(answer), H) along ``example``'s answer, if the
        cache has room: from a batch above, or from the sampling pass that wrote the answer."""
        key = example.key
        if key not in self.teacher_cache and states.nbytes <= self._cache_left:
            self.teacher_cache[key] = states.detach().clone()
            self._cache_left -= states.nbytes


def sample_rows(
    model,
    tokenizer,
    rows: list[tuple],
    cfg: SamplingConfig,
    *,
    batch_size: int = 32,
    examples: list[dict] = (),
    tick=None,
    message: str = "",
) -> list[list[int]]:
    """``generate_rows`` over (system, prompt, sample index) rows, ``batch_size`` rows per batch;
    ``tick(k, message)`` after each batch of k rows, and ``tick(0, message + where)`` after each of a
    batch's decoding steps (``where``: the batch's rows and the token). The index seeds the row's
    random stream, so two conditions that share it draw the same random numbers for the same prompt."""
    out: list[list[int]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        where = f"{message} · answers {start + 1}–{start + len(chunk)} of {len(rows)}: token "
        out += generate_rows(
            model,
            tokenizer,
            [(s, p) for s, p, _ in chunk],
            cfg,
            sample_index=[i for _, _, i in chunk],
            examples=examples,
            on_token=tick and (lambda step, _, where=where: tick(0, f"{where}{step + 1}/{cfg.max_new_tokens}")),
        )
        if tick:
            tick(len(chunk), message)
    return out


def with_end(tokenizer, answers: list[list[int]], max_tokens: int) -> list[list[int]]:
    """An answer that stopped by itself ends with the end-of-turn token, so the stop decision is scored
    too (as in training's held-out KL)."""
    end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    return [a + ([end] if len(a) < max_tokens and end is not None else []) for a in answers]


class SamplingStopped(Exception):
    """should_stop() said so between two generation steps; `.done` holds the answers finished so far."""

    def __init__(self, done: dict[int, list[int]]):
        super().__init__(f"stopped while sampling the teacher ({len(done)} answers kept)")
        self.done = done


def sample_answers(
    pair: TeacherStudent,
    prompts: list[str],
    cfg,
    *,
    seed: int,
    accelerator=None,
    batch_size: int = 64,
    progress=None,
    should_stop=None,
    kept=None,
    on_batch=None,
) -> list[Example]:
    """Teacher samples (adapter off, constitution in context), this process's share batched, then gathered.

    ``progress(tokens, of)`` after every generation step (the answers' token budget: an answer that
    ends early counts as whole); ``should_stop()`` is asked between steps and raises SamplingStopped,
    after keeping (``on_batch``) the answers of the batch that had ended.
    ``on_batch(done)`` gets {row: answer ids} after every batch, so a caller can keep them, and
    ``kept`` brings them back: those rows are not sampled again (each row has its own random stream,
    so the answers are the same either way)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    rows = [(p, k) for p in prompts for k in range(cfg.samples_per_prompt)]
    done: dict[int, list[int]] = {int(i): ids for i, ids in (kept or {}).items()}
    mine = [i for i in range(rank, len(rows), world) if i not in done]
    sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=cfg.temperature, seed=seed)
    budget = cfg.sample_tokens * (len(mine) + len(done))
    model, tok = pair.model, pair.tokenizer
    end = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    was_training = model.training
    model.eval()
    with pair.teacher_mode():
        for start in range(0, len(mine), batch_size):
            part = mine[start : start + batch_size]
            before = cfg.sample_tokens * len(done)

            def on_token(step, out, part=part, before=before):
                if progress:
                    progress(before + (step + 1) * len(part), budget)
                if should_stop and should_stop():
                    # the rows whose answer had ended are complete: kept one by one, not per batch
                    for i, answer in zip(part, out):
                        if len(answer) <= step:
                            done[i] = answer + ([end] if end is not None else [])
                    if on_batch:
                        on_batch(dict(done))
                    raise SamplingStopped(dict(done))

            states: list[torch.Tensor] = []
            ids = generate_rows(
                model,
                tok,
                [(pair.system, rows[i][0]) for i in part],
                sampling,
                sample_index=[rows[i][1] + 1_000 * i for i in part],
                examples=pair.examples,
                prefixes=pair.teacher_prefixes,
                states=states,
                on_token=on_token,
            )
            for i, answer, h in zip(part, ids, states):
                # an answer that ended by itself ends with the end-of-turn token: the student learns to stop
                done[i] = answer + ([end] if len(answer) < cfg.sample_tokens and end is not None else [])
                # the states the answer was sampled from are the teacher's along it: training needs
                # no teacher forward for this answer
                pair.keep_teacher(Example(rows[i][0], done[i]), h[: len(done[i])])
            if on_batch:
                on_batch(dict(done))
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        done = dict(kv for part in gather_object([list(done.items())]) for kv in part)
    return [Example(rows[i][0], done[i]) for i in range(len(rows)) if done[i]]


@torch.no_grad()
def heldout_kl(
    pair: TeacherStudent,
    examples: list[Example],
    batch_size: int = 16,
    chunk: int = 256,
    accelerator=None,
    progress=None,
    observe=None,
) -> float:
    """Token-weighted mean KL(teacher || student) along the held-out teacher samples (nats/token);
    ``progress(answers, of)`` after every batch; ``observe(batch, student states, teacher states)``
    sees every batch's states (another measure along the same forward passes)."""
    model = pair.model
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = examples[rank::world]
    total = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), batch_size):
        batch = mine[start : start + batch_size]
        hs, ht, targets = pair.hidden(batch)
        sums = chunked_loss(pair.lm_head, "kl", hs, ht, targets, chunk=chunk)
        if observe:
            observe(batch, hs, ht)
        total += torch.tensor([sums["kl"], sums["tokens"]], dtype=torch.float64)
        if progress:
            progress(min(start + batch_size, len(mine)), len(mine))
    model.train(was_training)
    if world > 1:
        total = accelerator.reduce(total.to(accelerator.device), "sum").cpu()
    return float(total[0] / total[1]) if total[1] else math.nan
