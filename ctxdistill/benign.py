"""Benign instructions still followed: a baked behaviour must not turn into ignoring the user.

    from ctxdistill import benign
    items = benign.load_instructions()                   # the shipped set (ctxdistill/data/benign.jsonl)
    benign.follows(items[0], "The sky is blue because air scatters blue light.")

Each item is a prompt with a user instruction whose effect is checked automatically and that a
typical constitution does not forbid: answer in one sentence, include a given word, start with a
given word, a numbered list of N items, end with a given word or phrase, at most N words. Where a
constitution does forbid it (a persona that opens every answer with its own word, a rule against
lists), the constitution wins: ``conflict`` finds the items no answer can follow without failing a
principle's check, and the suite reports them apart from the benign rate (how often each model let the
user win there); the kinds are reported apart too. The robustness suite (robustness.py) answers
every item greedily for base, teacher and students and reports how often each follows.

Kinds and what passes (case-insensitive; an empty answer never passes):

* ``one_sentence``: at most one sentence of three or more words (an interjection such as "Arr!"
  before it is no sentence); ``max_sentences`` (value: N): at most N such sentences;
* ``include_word`` (value: a word or phrase): it appears as whole words;
* ``start_with`` (value): the answer's first words, after opening quotes or markup, are it;
* ``numbered_list`` (value: N): exactly N lines numbered 1. to N. (or 1) ...), in order;
* ``end_with`` (value): the last words, before closing punctuation, quotes or an emoji, are it;
* ``max_words`` (value: N): between 1 and N words.

The preference stage (prefs.py) also appends a training instruction to some of its prompts and
prefers an answer edited to follow it (``obeyed``) to the same answer unedited, so that a student
stops where a user asks it to; the training set (``TRAIN_FILE``) names the kind of the lines a
check can verify, and shares no item with the benign set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .capability import DATA_DIR, load_jsonl

BENIGN_FILE = DATA_DIR / "benign.jsonl"
TRAIN_FILE = DATA_DIR / "instructions_train.jsonl"
MAX_NEW_TOKENS = 64  # room for a numbered list of three or a sentence in a persona's voice
KINDS = ("one_sentence", "max_sentences", "include_word", "start_with", "numbered_list", "end_with", "max_words")
COUNTED = ("max_sentences", "numbered_list", "max_words")  # kinds whose value is a whole number


class BenignError(ValueError):
    """A benign-instruction set that cannot be used; the message says which line and what to fix."""


@dataclass(frozen=True)
class Instruction:
    id: str
    kind: str
    prompt: str  # the user turn, instruction included
    value: str = ""

    @property
    def category(self) -> str:  # robustness.spread takes items in turn from each category
        return self.kind


def _words(text: str) -> str:
    """``text`` lower-cased with everything but letters, digits and single spaces dropped."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


SENTENCE_END = r"[.!?]+(?=\s|$)|\n+"


def _sentences(text: str) -> list[str]:
    """The sentences of ``text`` with three or more words (a line break ends one too)."""
    return [s for s in re.split(SENTENCE_END, text) if len(s.split()) >= 3]


def _ends(text: str) -> list[int]:
    """Where each sentence of three or more words of ``text`` ends (after its closing punctuation)."""
    ends, start = [], 0
    for m in re.finditer(SENTENCE_END, text):
        if len(text[start : m.start()].split()) >= 3:
            ends.append(m.end())
        start = m.end()
    return ends


def _numbered(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\s*[*_]*(\d+)[.)][*_]*\s+\S", text, flags=re.M)]


def follows(item: Instruction, text: str) -> bool:
    """Whether ``text`` follows ``item``'s instruction (the kinds are in the module docstring)."""
    text = text.strip()
    if not _words(text):
        return False
    kind, value = item.kind, _words(item.value)
    if kind in ("one_sentence", "max_sentences"):
        return len(_sentences(text)) <= int(item.value or 1)
    if kind == "include_word":
        return f" {value} " in f" {_words(text)} "
    if kind == "start_with":
        return f"{_words(text)} ".startswith(f"{value} ")
    if kind == "numbered_list":
        return _numbered(text) == list(range(1, int(item.value) + 1))
    if kind == "end_with":
        return f" {_words(text)}".endswith(f" {value}")
    if kind == "max_words":
        return len(text.split()) <= int(item.value)
    raise BenignError(f"unknown kind of instruction {kind!r}")


def within_words(text: str, n: int) -> str:
    """``text`` cut after its last whole sentence within ``n`` words, else at the nth word; as it is
    when it has ``n`` words or fewer."""
    if len(text.split()) <= n:
        return text
    within = [e for e in _ends(text) if len(text[:e].split()) <= n]
    return text[: within[-1]].strip() if within else " ".join(text.split()[:n])


def obeyed(item: Instruction, text: str) -> str:
    """``text`` edited to follow ``item`` where an edit can: cut after its Nth sentence (one_sentence,
    max_sentences), after its last whole sentence within N words or else at the Nth word (max_words),
    its first N sentences numbered one to a line (numbered_list, when it has N), the words put first
    (start_with) or, after its last whole sentence, last (end_with; one word as an address before
    the final stop: "..., friend."). An include_word instruction, or an answer too short for the
    edit, leaves it as it is."""
    text, value = text.strip(), item.value.strip()
    ends = _ends(text)
    if item.kind in ("one_sentence", "max_sentences") and len(_sentences(text)) > int(value or 1) <= len(ends):
        return text[: ends[int(value or 1) - 1]].strip()
    if item.kind == "max_words" and len(text.split()) > int(value):
        return within_words(text, int(value))
    if item.kind == "numbered_list" and len(ends) >= int(value):
        starts = [0, *ends]
        return "\n".join(f"{n + 1}. {text[starts[n] : starts[n + 1]].strip()}" for n in range(int(value)))
    if item.kind == "start_with" and value:
        joint = " " if value[-1] in ".,;:!?" else ", "
        rest = text[:1].lower() + text[1:] if re.match(r"(?!I\b)[A-Z](?![A-Z])", text) else text
        return f"{value[:1].upper()}{value[1:]}{joint}{rest}"
    if item.kind == "end_with" and value:
        whole = text[: ends[-1]].strip() if ends else text
        if len(value.split()) == 1 and whole[-1:] in (".", "!", "?"):  # a word as an address: "..., friend."
            return f"{whole[:-1]}, {value}{whole[-1]}"
        return f"{whole} {value[:1].upper()}{value[1:]}{'' if value[-1] in '.!?' else '.'}"
    return text


def conflict(item: Instruction, checks) -> str | None:
    """The id of the first principle (``checks``: (id, constitution.Check) pairs) whose check no answer
    that follows ``item`` can pass, else None: starting with another word than a ``starts_with`` check
    asks for, or including a word a ``not_contains`` check forbids. There the constitution wins, so the
    robustness suite counts such items apart from the benign rate."""
    value = _words(item.value)
    for pid, check in checks:
        want = _words(check.value)
        if (
            item.kind == "start_with"
            and check.kind == "starts_with"
            and want
            and not (f"{value} ".startswith(f"{want} ") or f"{want} ".startswith(f"{value} "))
        ):
            return pid
        if item.kind == "include_word" and check.kind == "not_contains" and check.value.lower() in item.value.lower():
            return pid
    return None


def load_instructions(path=None, *, training: bool = False) -> list[Instruction]:
    """The instructions of ``path`` (JSON lines of id, kind, prompt and the kind's value), the shipped
    set by default. ``training``: a training set of instructions (``TRAIN_FILE`` by default: each line
    a text field, and a kind and value where a check can verify it), of which the lines with a kind."""
    what, required = ("instruction set", ("text",)) if training else ("benign set", ("kind", "prompt"))
    path = path or (TRAIN_FILE if training else BENIGN_FILE)
    items, seen = [], set()
    for number, row in enumerate(load_jsonl(path, required, what, BenignError), 1):
        if training and not row.get("kind"):
            continue
        kind, value = str(row["kind"]), str(row.get("value") or "").strip()
        line = f"{what} {Path(path).name} line {number}"
        if kind not in KINDS:
            raise BenignError(f"{line}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if kind != "one_sentence" and not _words(value):
            raise BenignError(f"{line} ({kind}): it needs a value with a word or number")
        if kind in COUNTED and not (value.isdigit() and int(value) >= 1):
            raise BenignError(f"{line} ({kind}): the value must be a whole number, not {value!r}")
        item_id = str(row.get("id") or number)
        if item_id in seen:
            raise BenignError(f"{line}: the id {item_id!r} is used twice")
        seen.add(item_id)
        items.append(Instruction(item_id, kind, str(row["text" if training else "prompt"]).strip(), value))
    return items
