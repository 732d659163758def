"""A capability set that style cannot hide: short questions with verifiable answers.

    from ctxdistill import capability
    items = capability.load_items()                      # the shipped set (ctxdistill/data/capability.jsonl)
    flags = capability.score(model, tokenizer, items, system=None)
    capability.accuracy(flags)                           # {"value", "ci", "n"}

Each item is a prompt (facts, arithmetic, unit conversions, dates, what a short piece of code
prints, spelling) and its accepted answers. An answer is right when one accepted answer appears
in it as whole words, after both are normalised: lower case, punctuation dropped, thousands
separators removed and numbers written as words turned into digits ("fifty-six" = "56"). So a
pirate's "Arr, matey, 7 times 8 be fifty-six!" counts, and so does a plain "56." The prompts
never contain their own answer (tests/test_robustness.py checks it), so an answer that only
repeats the question does not pass.

Answers are greedy (temperature 0): accuracy measures what the model knows, not the sampling luck.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .safety import UnsafeInput, check_set, longest_row

DATA_DIR = Path(__file__).resolve().parent / "data"
CAPABILITY_FILE = DATA_DIR / "capability.jsonl"
MAX_NEW_TOKENS = 24  # room for a styled short answer ("Arr! The capital be Paris, matey.")


class CapabilityError(ValueError):
    """A capability set that cannot be used; the message says which line and what to fix."""


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    prompt: str
    answers: tuple[str, ...]


def load_jsonl(path, required: tuple[str, ...], what: str, error=CapabilityError) -> list[dict]:
    """The rows of a JSON-lines file, each with the ``required`` fields non-empty; ``error`` names the
    first bad line (blank lines are skipped)."""
    path = Path(path)
    try:
        check_set(f"the {what} {path.name}", size=path.stat().st_size)  # before reading it: a 200 MB set is refused
        lines = path.read_text(encoding="utf-8").splitlines()
        check_set(f"the {what} {path.name}", rows=len(lines), longest=longest_row(lines))
    except UnsafeInput as exc:
        raise error(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read the {what} {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise error(f"{path} line {number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            fields = f" with {', '.join(required)}" if required else ""
            raise error(f"{path} line {number}: expected a JSON object{fields}")
        for name in required:
            value = row.get(name)
            if value is None or value == "" or value == []:
                raise error(f"{path} line {number}: the {name!r} field is missing or empty")
        rows.append(row)
    if not rows:
        raise error(f"the {what} {path} is empty: it needs at least one line")
    return rows


def load_items(path=None) -> list[Item]:
    """The capability items of ``path`` (JSON lines of id, category, prompt, answers), the shipped set
    by default. ``answers`` is one accepted answer or a list of them."""
    items, seen = [], set()
    for number, row in enumerate(load_jsonl(path or CAPABILITY_FILE, ("prompt", "answers"), "capability set"), 1):
        answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
        if not all(isinstance(a, (str, int, float)) and normalise(str(a)) for a in answers):
            raise CapabilityError(f"capability item {number}: every accepted answer must be a non-empty text or number")
        item_id = str(row.get("id") or number)
        if item_id in seen:
            raise CapabilityError(f"capability item {number}: the id {item_id!r} is used twice")
        seen.add(item_id)
        items.append(
            Item(item_id, str(row.get("category") or "general"), str(row["prompt"]), tuple(str(a) for a in answers))
        )
    return items


# --------------------------------------------------------------------------- answer matching

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000}


def _words_to_numbers(words: list[str]) -> list[str]:
    """Runs of number words become one number: ["fifty", "six", "apples"] -> ["56", "apples"],
    "one hundred and five" -> "105"; "seven eight" stays two numbers."""
    out: list[str] = []
    total = current = 0
    last = ""  # "", "unit", "tens" or "scale": the kind of the run's last number word

    def flush():
        nonlocal total, current, last
        if last:
            out.append(str(total + current))
        total = current = 0
        last = ""

    for k, w in enumerate(words):
        nxt = words[k + 1] if k + 1 < len(words) else ""
        if w in _UNITS or w in _TENS:
            value, kind = (_UNITS[w], "unit") if w in _UNITS else (_TENS[w], "tens")
            joins = last == "scale" or (last == "tens" and kind == "unit" and 0 < value < 10)
            if last and not joins:
                flush()
            current += value
            last = kind
        elif w in _SCALES and last:
            if w == "hundred":
                current = (current or 1) * 100
            else:
                total, current = total + (current or 1) * _SCALES[w], 0
            last = "scale"
        elif w == "and" and last == "scale" and (nxt in _UNITS or nxt in _TENS):
            continue
        else:
            flush()
            out.append(w)
    flush()
    return out


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation, number words as digits, "1,000" as "1000"."""
    text = str(text).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # "fifty-six"
    words = re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+", text)
    words = [re.sub(r"\.0+$", "", w) for w in words]  # "56.0" is 56
    return _words_to_numbers(words)


def matches(answer_text: str, accepted) -> bool:
    """True when one of the ``accepted`` answers (a text or a list of them) appears in ``answer_text``
    as a run of whole words, after normalising both (see ``normalise``)."""
    words = normalise(answer_text)
    for option in [accepted] if isinstance(accepted, str) else accepted:
        target = normalise(str(option))
        if target and any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1)):
            return True
    return False


# --------------------------------------------------------------------------- scoring


def score(
    model,
    tokenizer,
    items: list[Item],
    system: str | None = None,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 32,
    examples=(),
    tick=None,
    message: str = "",
) -> list[bool]:
    """Greedy answers of the model as it is (the caller sets the adapter: off for base and teacher, on
    for a student) to every item, with ``system`` as system prompt (None: the template's default),
    in batches; True where the answer matches. ``tick``, ``message``: as engine.sample_rows takes them."""
    from .engine import sample_rows
    from .sampling import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    ids = sample_rows(
        model,
        tokenizer,
        [(system, it.prompt, i) for i, it in enumerate(items)],
        sampling,
        batch_size=batch_size,
        examples=examples,
        tick=tick,
        message=message,
    )
    return [matches(tokenizer.decode(a, skip_special_tokens=True), it.answers) for a, it in zip(ids, items)]


def accuracy(flags, n_boot: int = 1000, seed: int = 0) -> dict:
    """Share of right answers with its percentile-bootstrap 95% interval over items."""
    from .stats import estimate

    return estimate(lambda x: x.mean(1), np.asarray(flags, dtype=float), n_boot=n_boot, seed=seed)
