"""Prompt sets: the formats they are read from, import with a train/held-out split, selection,
and the shipped default set.

    ctxdistill import prompts.csv --prompt-set mine --column question

Import reads CSV, TSV, JSONL (or a JSON list), plain text (one prompt per line), Parquet, or a
`datasets` dataset (a save_to_disk directory, or a hub id when the hub answers). Tabular files
have their prompt column picked by name (`columns()` lists them for the UI's picker). Every
problem is one sentence and nothing is half-imported: the whole file goes in one transaction.
Held-out prompts are never sampled for training: they are for evaluation only.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from .safety import UnsafeInput, check_set, quote
from .store import Store

DEFAULT_SET = "default"
# short factual questions (no request about the answer's form): the default run's replay set, so that a
# student trained to keep its constitution against override attempts still answers them (no question of
# the capability set it is scored on is among them: tests/test_generate.py)
SHORT_ANSWERS_SET = "short-answers"

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
DEFAULT_PROMPTS = SHIPPED_DIR / "default.jsonl"
SHIPPED_SETS = {DEFAULT_SET: DEFAULT_PROMPTS, SHORT_ANSWERS_SET: SHIPPED_DIR / "short-answers.jsonl"}


MAX_PROMPT_CHARS = 8000  # about 2 000 tokens: leaves room for the constitution and the answer


FORMATS = ("csv", "jsonl", "json", "txt", "parquet", "datasets")


TEXT_COLUMNS = ("text", "prompt", "init_prompt", "instruction", "question", "query", "input")


HELDOUT_NAMES = {"heldout", "held-out", "held_out", "test", "eval", "evaluation", "validation", "valid", "dev"}


TRAIN_NAMES = {"train", "training", ""}


class ImportFileError(ValueError):
    """A file that cannot be imported; the message says what is wrong and where."""


def detect_format(source: str | Path) -> str:
    path = Path(source)
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("csv", "tsv"):
        return "csv"
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in ("json", "txt", "parquet"):
        return suffix
    if not path.exists() and len(str(source).split("/")) == 2:
        return "datasets"  # owner/name: a hub id
    raise ImportFileError(
        f"{path.name}: unknown file type; use one of .csv, .jsonl, .json, .txt, .parquet or a datasets directory"
    )


def read_table(source: str | Path, fmt: str | None = None) -> list[dict]:
    """The file's records as dicts (a text file gives {"text": line}). A `datasets`
    DatasetDict gives every split, each record tagged with its split name in "split".
    A file above the set limits (safety.check_set: its size, then its records) is refused."""
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise ImportFileError(f"unknown format {quote(fmt)}; use one of {', '.join(FORMATS)}")
    path = Path(source)
    if fmt != "datasets":
        if not path.is_file():
            raise ImportFileError(f"file not found: {path}")
        _check_set(path.name, size=path.stat().st_size)
    records = _read_datasets(str(source)) if fmt == "datasets" else _read_file(path, fmt)
    _check_set(path.name, rows=len(records))
    return records


def _check_set(name: str, **measures) -> None:
    try:
        check_set(f"the prompt file {name}", **measures)
    except UnsafeInput as e:
        raise ImportFileError(str(e)) from None


def _read_file(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return _read_parquet(path)
    text = _read_text(path)
    if not text.strip():
        raise ImportFileError(f"{path.name} is empty")
    if fmt == "txt":
        return [{"text": line} for line in text.splitlines() if line.strip()]
    if fmt == "csv":
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        try:
            records = list(csv.DictReader(text.splitlines(), dialect=dialect))
        except csv.Error as e:
            raise ImportFileError(f"{path.name} is not valid CSV: {e}") from None
        if any(None in r for r in records):
            bad = next(i for i, r in enumerate(records, 2) if None in r)
            raise ImportFileError(f"{path.name} line {bad}: more fields than the header has columns")
        return records
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ImportFileError(f"{path.name} is not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(data, list):
            raise ImportFileError(f"{path.name}: a JSON file must hold a list of records or strings")
        return [_record(x, path.name, i) for i, x in enumerate(data, 1)]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_record(json.loads(line), path.name, n))
        except json.JSONDecodeError as e:
            raise ImportFileError(f"{path.name} line {n} is not valid JSON: {e.msg}") from None
    return records


def _record(x, name: str, n: int) -> dict:
    if isinstance(x, str):
        return {"text": x}
    if not isinstance(x, dict):
        raise ImportFileError(f"{name} record {n} is {type(x).__name__}; expected an object or a string")
    return x


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ImportFileError(
            f"{path.name} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
            "save it as UTF-8 and import again"
        ) from None


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ImportFileError(f"{path.name} is not a readable Parquet file: {e}") from None


def _read_datasets(source: str) -> list[dict]:
    import datasets

    from .models import hub_reachable

    if Path(source).exists():
        try:
            ds = datasets.load_from_disk(source)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ImportFileError(f"{source} is not a dataset saved with save_to_disk: {e}") from None
    elif not hub_reachable():
        raise ImportFileError(f"{source} is not a local path and the Hugging Face hub cannot be reached")
    else:
        try:
            ds = datasets.load_dataset(source)
        except Exception as e:  # the hub raises many kinds: not found, gated, bad config
            raise ImportFileError(f"cannot load dataset {quote(source)} from the hub: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        return [{**row, "split": row.get("split", name)} for name, part in ds.items() for row in part]
    return list(ds)


def columns(records: list[dict]) -> list[str]:
    """Column names in first-seen order, for the column picker."""
    seen: dict[str, None] = {}
    for r in records[:1000]:
        seen.update(dict.fromkeys(r))
    return list(seen)


def guess_column(cols: list[str]) -> str | None:
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in TEXT_COLUMNS if c in lower), cols[0] if len(cols) == 1 else None)


def split_of(text: str, heldout_fraction: float) -> str:
    """A stable split from the text itself, so re-importing a file gives the same split."""
    h = int.from_bytes(hashlib.sha256(text.strip().encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_fraction else "train"


def prompt_rows(
    records: list[dict],
    column: str | None = None,
    *,
    split_column: str | None = None,
    category_column: str | None = None,
    heldout_fraction: float = 0.1,
    name: str = "the file",
) -> tuple[list[dict], dict]:
    """Records -> store rows {text, split, category} and counts {read, empty, duplicates}.

    The split comes from `split_column` (or a column named "split") when there is one,
    else from a hash of the text. Raises ImportFileError on a missing column, an
    unknown split value or a prompt over MAX_PROMPT_CHARS."""
    if not records:
        raise ImportFileError(f"{name} holds no records")
    cols = columns(records)
    column = column or guess_column(cols)
    if column is None:
        raise ImportFileError(f"{name}: pick the prompt column; the columns are: {', '.join(cols)}")
    for what, col in (("prompt", column), ("split", split_column), ("category", category_column)):
        if col is not None and col not in cols:
            raise ImportFileError(f"{name} has no {what} column {quote(col)}; the columns are: {', '.join(cols)}")
    if split_column is None and "split" in cols:
        split_column = "split"
    if not 0 <= heldout_fraction < 1:
        raise ImportFileError(f"the held-out fraction must be in [0, 1), got {heldout_fraction}")
    rows, seen, counts = [], set(), {"read": len(records), "empty": 0, "duplicates": 0}
    for n, r in enumerate(records, 1):
        value = r.get(column)
        text = "" if value is None else str(value).strip()
        if not text:
            counts["empty"] += 1
            continue
        if len(text) > MAX_PROMPT_CHARS:
            raise ImportFileError(
                f"{name} record {n}: the prompt is {len(text):,} characters long; "
                f"the limit is {MAX_PROMPT_CHARS:,}. Shorten or remove it and import again"
            )
        if text in seen:
            counts["duplicates"] += 1
            continue
        seen.add(text)
        if split_column:
            raw = str(r.get(split_column) or "").strip().lower()
            if raw not in HELDOUT_NAMES | TRAIN_NAMES:
                raise ImportFileError(
                    f"{name} record {n}: split {quote(r.get(split_column))} is neither train "
                    "nor held-out (heldout, test, validation, eval)"
                )
            split = "heldout" if raw in HELDOUT_NAMES else "train"
        else:
            split = split_of(text, heldout_fraction)
        category = str(r.get(category_column or "category") or "")
        rows.append({"text": text, "split": split, "category": category})
    if not rows:
        raise ImportFileError(f"{name}: every {quote(column)} value is empty; nothing to import")
    return rows, counts


def import_prompts(
    store: Store,
    set_name: str,
    source: str | Path,
    *,
    column: str | None = None,
    split_column: str | None = None,
    category_column: str | None = None,
    heldout_fraction: float = 0.1,
    fmt: str | None = None,
    owner: str = "",
) -> dict:
    """Import a prompt file into a set (created if new), all or nothing; returns a summary."""
    if not (set_name or "").strip():
        raise ImportFileError("give the prompt set a name")
    records = read_table(source, fmt)
    rows, counts = prompt_rows(
        records,
        column,
        split_column=split_column,
        category_column=category_column,
        heldout_fraction=heldout_fraction,
        name=Path(str(source)).name,
    )
    added = store.add_prompts(set_name, rows, source=str(source), owner=owner)
    counts["duplicates"] += len(rows) - added
    sets = {s["name"]: s for s in store.prompt_sets(owner=owner)}
    s = sets[set_name.strip()]
    return {"set": s["name"], **counts, "added": added, "n_train": s["n_train"], "n_heldout": s["n_heldout"]}


def ensure_default_prompts(store: Store, owner: str = "") -> int:
    """Seed the shipped prompt sets (SHIPPED_SETS) that a workspace lacks; returns how many prompts were added."""
    have = {s["name"] for s in store.prompt_sets(owner=owner)}
    return sum(
        import_prompts(store, name, path, owner=owner)["added"]
        for name, path in SHIPPED_SETS.items()
        if name not in have and path.is_file()
    )


def select_prompts(
    store: Store, set_name: str, *, search: str = "", category: str = "", limit: int = 0, owner: str = ""
) -> list[dict]:
    """The set's train prompts matching the filters (held-out prompts are never sampled for training)."""
    prompts = [
        p
        for p in store.get_prompts(set_name, split="train", owner=owner)
        if (not search or search.lower() in p["text"].lower()) and (not category or p["category"] == category)
    ]
    return prompts[:limit] if limit else prompts
