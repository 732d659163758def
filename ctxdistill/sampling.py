"""Sampling primitives: batched prompted/unprompted sampling and scoring with shared-prefix KV caching.

Every chat the model sees starts with a system block: the constitution for the teacher, the
template's default for the unprompted model. That block is the same for every prompt of a
condition, so its key/value cache is computed once (``Prefixes``) and shared by all rows. One
batch can mix conditions: the prefixes are laid side by side in one cache, and each row's
attention mask lets it see only its own prefix, then its (left-padded) prompt and answer.
Position ids restart after each prefix, so a row sees exactly what it would see alone.

    python -c "from ctxdistill.sampling import *"   # library module; see bench/preview.py
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch

from .heartbeat import layers_counted
from .losses import kl_per_token

MAX_NEW_TOKENS_LIMIT = 1024


@dataclass
class SamplingConfig:
    """How answers are sampled. temperature 0 means greedy."""

    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate per answer (1-1024)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; otherwise softmax temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (0-1]"})
    seed: int = field(default=0, metadata={"help": "random seed; the k-th sample of a prompt is reproducible"})
    n: int = field(default=1, metadata={"help": "samples per prompt (1-16)"})

    def validate(self) -> "SamplingConfig":
        errors = []
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            errors.append(f"max new tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}")
        if not 0 <= float(self.temperature) <= 5:
            errors.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0 < float(self.top_p) <= 1:
            errors.append(f"top-p must be in (0, 1], got {self.top_p}")
        if not 1 <= int(self.n) <= 16:
            errors.append(f"samples per prompt must be between 1 and 16, got {self.n}")
        if errors:
            raise ValueError("; ".join(errors))
        return self


def chat_ids(tokenizer, prompt: str | list[dict], system: str | None = None, examples: list[dict] = ()) -> list[int]:
    """Token ids of a chat ready for the answer; ``system=None`` keeps the template default.

    ``prompt`` is one user turn, or a list of messages ending with a user turn (a multi-turn
    conversation, as critique and revision passes need)."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + list(examples)
    messages += list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def system_prefix(tokenizer, system: str | None, examples: list[dict] = ()) -> list[int]:
    """The tokens every chat with this system prompt starts with (found by rendering two user turns)."""
    a, b = chat_ids(tokenizer, "a", system, examples), chat_ids(tokenizer, "b", system, examples)
    return a[: _common_prefix(a, b)]


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return ids


def decoder_of(model):
    """The transformer body of a causal LM (a peft model's too): hidden states, no output layer."""
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()


class Prefixes:
    """Key/value cache of one or more prompt prefixes, computed once and reused by every batch.

    Prefix ``g`` occupies cache slots ``offsets[g] : offsets[g] + lengths[g]`` and was encoded with
    positions ``0 .. lengths[g]-1``, as if it were alone.
    """

    def __init__(self, model, prefix_ids: list[list[int]]):
        from transformers import DynamicCache

        self.ids = [list(p) for p in prefix_ids]
        self.lengths = [len(p) for p in self.ids]
        self.offsets = [sum(self.lengths[:g]) for g in range(len(self.ids))]
        self.total = sum(self.lengths)
        device = model.device
        cache = DynamicCache(config=model.config)
        decoder = decoder_of(model)  # the prefix's keys and values are all we need: no logits
        with torch.no_grad():
            for g, ids in enumerate(self.ids):
                if not ids:
                    continue
                seen = self.offsets[g]
                mask = torch.cat([torch.zeros(seen, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)])
                decoder(
                    input_ids=torch.tensor([ids], device=device),
                    attention_mask=mask[None].to(device),
                    position_ids=torch.arange(len(ids), device=device)[None],
                    cache=cache,
                    use_cache=True,
                )
        self._kv = [(layer.keys, layer.values) for layer in cache.layers] if self.total else []
        self._config = model.config

    def cache_for(self, batch_size: int):
        """A fresh cache holding the prefixes for ``batch_size`` rows (the forward pass appends to it)."""
        from transformers import DynamicCache

        if not self.total:
            return DynamicCache(config=self._config)
        data = [
            (k.expand(batch_size, -1, -1, -1).contiguous(), v.expand(batch_size, -1, -1, -1).contiguous())
            for k, v in self._kv
        ]
        return DynamicCache(ddp_cache_data=data, config=self._config)

    def prefix_mask(self, groups: list[int]) -> torch.Tensor:
        """(B, total) mask: each row sees only its own prefix."""
        mask = torch.zeros(len(groups), self.total, dtype=torch.long)
        for row, g in enumerate(groups):
            mask[row, self.offsets[g] : self.offsets[g] + self.lengths[g]] = 1
        return mask


def split_rows(
    tokenizer, rows: list[tuple[str | None, str]], examples: list[dict] = ()
) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """Turn (system, prompt) rows into (prefix ids per distinct system, group per row, suffix ids per row)."""
    systems: list[str | None] = []
    prefixes: list[list[int]] = []
    groups, suffixes = [], []
    for system, prompt in rows:
        if system not in systems:
            systems.append(system)
            prefixes.append(system_prefix(tokenizer, system, examples if system is not None else ()))
        g = systems.index(system)
        full = chat_ids(tokenizer, prompt, system, examples if system is not None else ())
        if full[: len(prefixes[g])] != prefixes[g]:  # a tokenizer that merges across the boundary
            prefixes[g] = prefixes[g][: _common_prefix(full, prefixes[g])]
        groups.append(g)
        suffixes.append(full)
    suffixes = [full[len(prefixes[g]) :] for full, g in zip(suffixes, groups)]
    return prefixes, groups, suffixes


def forward_suffixes(model, prefixes: Prefixes, groups: list[int], suffixes: list[list[int]], pad_id: int):
    """One forward pass over left-padded suffixes after their cached prefixes.

    Returns (logits (B, S, V), suffix mask (B, S), cache, full attention mask, next positions).
    """
    device = model.device
    ids, mask, attention, positions = suffix_inputs(prefixes, groups, suffixes, pad_id)
    cache = prefixes.cache_for(len(suffixes))
    out = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    )
    return out.logits, mask, out.cache, attention, positions[:, -1] + 1


def suffix_inputs(prefixes: Prefixes, groups: list[int], suffixes: list[list[int]], pad_id: int):
    """Left-padded suffix ids after their cached prefixes, as CPU tensors:
    (ids (B, S), suffix mask (B, S), attention mask over prefixes + suffix, position ids (B, S))."""
    ids, mask, positions = left_padded(suffixes, pad_id, [prefixes.lengths[g] for g in groups])
    attention = torch.cat([prefixes.prefix_mask(groups), mask], dim=1)
    return ids, mask, attention, positions


def left_padded(seqs: list[list[int]], pad_id: int, starts: list[int]):
    """Rows of token ids padded on the left to one width, as CPU tensors: (ids (B, S), mask of the
    real tokens (B, S), position ids (B, S) counting each row's real tokens from ``starts[row]``)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
    positions = (torch.tensor(starts)[:, None] + mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


def _pick(logits: torch.Tensor, cfg: SamplingConfig, generators: list[torch.Generator] | None) -> torch.Tensor:
    if cfg.temperature == 0 or generators is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cpu = probs.cpu()
    return torch.stack([torch.multinomial(cpu[i], 1, generator=g)[0] for i, g in enumerate(generators)]).to(
        logits.device
    )


@torch.no_grad()
def generate_rows(
    model,
    tokenizer,
    rows: list[tuple[str | None, str]],
    cfg: SamplingConfig,
    *,
    sample_index: list[int] | None = None,
    examples: list[dict] = (),
    prefixes: Prefixes | None = None,
    on_token=None,
    states: list | None = None,
) -> list[list[int]]:
    """Generate one answer per (system, prompt) row, all rows in one batch, one forward per step.

    ``sample_index[i]`` seeds row i's random stream (seed, k), so a sample does not depend on what
    else is in the batch. ``on_token(step, new_ids_per_row)`` is called after each step (streaming).
    Returns the generated token ids per row, without the end-of-turn token. A ``states`` list gets
    one (picks, H) tensor per row: the decoder's final hidden states from which each of the row's
    tokens was picked, its end-of-turn token included (what the output layer turned into logits).
    """
    cfg.validate()
    if not rows:
        return []
    prefix_ids, groups, suffixes = split_rows(tokenizer, rows, examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = eos_ids(model, tokenizer)
    generators = None
    if cfg.temperature > 0:
        sample_index = sample_index or [0] * len(rows)
        generators = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + k) for k in sample_index]
    # the prompts' passes before the first token say nothing for seconds on a busy CPU: their layers are counted
    counted = partial(layers_counted, getattr(decoder_of(model), "layers", []), "reading the prompts, layer")
    if prefixes is None or prefixes.ids != prefix_ids:
        with counted():
            prefixes = Prefixes(model, prefix_ids)
    with _last_states(model, states is not None) as steps:
        with counted():
            first = forward_suffixes(model, prefixes, groups, suffixes, pad_id)
        out = _decode(model, first, len(suffixes), pad_id, stop, cfg, generators, on_token)
    for row, ids in enumerate(out if states is not None else ()):
        picks = len(ids) + 1 if len(ids) < cfg.max_new_tokens else len(ids)  # + the end-of-turn pick
        states.append(torch.stack([steps[k][row] for k in range(picks)]))
    return out


@contextmanager
def _last_states(model, record: bool):
    """Yields a list that gets the decoder's last-position hidden states (B, H) of each forward
    pass made inside the block (when ``record``)."""
    steps: list[torch.Tensor] = []
    hook = (
        decoder_of(model).register_forward_hook(
            lambda module, args, output: steps.append(output.last_hidden_state[:, -1])
        )
        if record
        else None
    )
    try:
        yield steps
    finally:
        if hook is not None:
            hook.remove()


def _decode(model, first, rows: int, pad_id, stop, cfg: SamplingConfig, generators, on_token) -> list[list[int]]:
    """The sampling loop of ``generate_rows``, from the prompts' pass (``forward_suffixes``'s result)."""
    logits, _, cache, attention, positions = first
    next_logits = logits[:, -1]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    device = model.device
    for step in range(cfg.max_new_tokens):
        token = _pick(next_logits, cfg, generators).cpu()
        for row in range(rows):
            if done[row]:
                continue
            if int(token[row]) in stop:
                done[row] = True
            else:
                out[row].append(int(token[row]))
        if on_token is not None:
            on_token(step, out)
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        token = torch.where(done, torch.tensor(pad_id), token)
        attention = torch.cat([attention, (~done).long()[:, None]], dim=1)
        step_out = model(
            input_ids=token[:, None].to(device),
            attention_mask=attention.to(device),
            position_ids=positions[:, None].to(device),
            cache=cache,
            use_cache=True,
        )
        cache, next_logits, positions = step_out.cache, step_out.logits[:, -1], positions + 1
    return out


@torch.no_grad()
def response_logits(
    model,
    tokenizer,
    rows: list[tuple[str | None, str, list[int]]],
    examples: list[dict] = (),
    prefixes: Prefixes | None = None,
):
    """Next-token logits at each response position for (system, prompt, response ids) rows.

    Returns a list of (T_i, V) tensors: row i's logits predicting response token t from the context
    before it.
    """
    prefix_ids, groups, suffixes = split_rows(tokenizer, [(s, p) for s, p, _ in rows], examples)
    if prefixes is None or prefixes.ids != prefix_ids:
        prefixes = Prefixes(model, prefix_ids)
    full = [suffix + list(resp) for suffix, (_, _, resp) in zip(suffixes, rows)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logits = forward_suffixes(model, prefixes, groups, full, pad_id)[0]
    width = logits.shape[1]
    result = []
    for row, (_, _, resp) in enumerate(rows):
        n = len(resp)
        # logits at position j predict token j+1; the response occupies the last n slots
        result.append(logits[row, width - n - 1 : width - 1])
    return result


@torch.no_grad()
def divergence(
    model,
    tokenizer,
    system: str,
    prompts: list[str],
    responses: list[list[int]],
    *,
    examples: list[dict] = (),
    batch_size: int = 8,
) -> list[list[float]]:
    """Per-token KL between the prompted (with ``system``) and unprompted next-token distributions
    along each response. Both conditions of a mini-batch go through one forward pass."""
    kls: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size]))
        rows = [(system, p, r) for p, r in chunk] + [(None, p, r) for p, r in chunk]
        logits = response_logits(model, tokenizer, rows, examples)
        half = len(chunk)
        for i in range(half):
            if len(chunk[i][1]) == 0:
                kls.append([])
                continue
            kls.append(kl_per_token(logits[i], logits[half + i]).cpu().tolist())
    return kls


def mean_kl(kls: list[list[float]]) -> float:
    """Token-weighted mean of per-token KLs (nats)."""
    tokens = [v for row in kls for v in row]
    return float(sum(tokens) / len(tokens)) if tokens else math.nan


@dataclass
class Preview:
    """Prompted (teacher) and unprompted answers side by side, with what the constitution changes."""

    prompts: list[str]
    prompted: list[list[str]]  # [prompt][sample]
    unprompted: list[list[str]]
    tokens: list[list[list[str]]]  # the prompted answers' tokens, as text pieces
    kl: list[list[list[float]]]  # per-token KL along each prompted answer
    done: bool = False

    @property
    def mean_kl(self) -> float:
        return mean_kl([k for per_prompt in self.kl for k in per_prompt])

    def to_json(self) -> dict:
        single = len(self.prompts) == 1
        pick = (lambda rows: rows[0]) if single else (lambda rows: rows)
        return {
            "prompted": pick(self.prompted),
            "unprompted": pick(self.unprompted),
            "mean_kl": self.mean_kl,
            "kl": pick([[sum(k) / len(k) if k else 0.0 for k in per] for per in self.kl]),
        }


def preview_stream(model, tokenizer, system: str, prompts: list[str], cfg: SamplingConfig, *, update_every: int = 4):
    """Yield a growing ``Preview`` while both conditions for every prompt and sample are generated
    in one batch; the last one carries the per-token KL along the prompted answers."""
    import queue
    import threading

    cfg.validate()
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("The prompt is empty: type a question or pick one from the prompt set.")
    rows, index = [], []
    for condition in (system, None):
        for p in prompts:
            for k in range(cfg.n):
                rows.append((condition, p))
                index.append(k)
    half = len(rows) // 2
    updates: queue.Queue = queue.Queue()
    result: dict = {}

    def shape(flat: list[list[int]]) -> tuple[list[list[str]], list[list[str]]]:
        text = [tokenizer.decode(ids, skip_special_tokens=True) for ids in flat]
        per = lambda part: [part[i * cfg.n : (i + 1) * cfg.n] for i in range(len(prompts))]
        return per(text[:half]), per(text[half:])

    def work():
        try:
            result["ids"] = generate_rows(
                model,
                tokenizer,
                rows,
                cfg,
                sample_index=index,
                on_token=lambda step, out: updates.put([list(o) for o in out]) if step % update_every == 0 else None,
            )
        except BaseException as exc:  # surfaced in the consumer
            result["error"] = exc
        updates.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (snapshot := updates.get()) is not None:
        prompted, unprompted = shape(snapshot)
        yield Preview(prompts, prompted, unprompted, [], [])
    thread.join()
    if "error" in result:
        raise result["error"]
    ids = result["ids"]
    prompted, unprompted = shape(ids)
    kls = divergence(model, tokenizer, system, [p for _, p in rows[:half]], ids[:half])
    tokens = [[tokenizer.decode([t]) for t in answer] for answer in ids[:half]]
    per = lambda flat: [flat[i * cfg.n : (i + 1) * cfg.n] for i in range(len(prompts))]
    yield Preview(prompts, prompted, unprompted, per(tokens), per(kls), done=True)


def preview(model, tokenizer, system: str, prompts: list[str], cfg: SamplingConfig) -> Preview:
    """The finished preview (see ``preview_stream``)."""
    *_, last = preview_stream(model, tokenizer, system, prompts, cfg)
    return last
