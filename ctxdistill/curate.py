"""Review helpers: automatic flags, reviewer actions, bulk actions, export and import.

    counts = refresh_flags(store, constitution_id)
    review(store, sample_id, version, status="accepted")
    export(store, constitution_id, "messages", "curated.jsonl")

Flags are badges that speed review; they never change a sample's status by
themselves. They are computed on the text that would be trained on (`final`):

* empty           — nothing but whitespace
* cut_off         — generation stopped at max_new_tokens, not at end of turn
* repetition      — the same words or characters loop
* failed_check    — a principle's automatic check fails (plus "failed_check:<id>")
* near_duplicate  — almost the same text as an earlier sample of this version
* worse           — a revision worse than the answer its chain started from (plus
                    "worse:<reason>": loop, lost_content, check); see revision_worse

Recomputing flags does not bump a sample's version, so it never makes a
reviewer's open edit conflict.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from .constitution import Check, Constitution, content_hash, from_hf_recipe, from_row, to_dict
from .prompts import MAX_PROMPT_CHARS, ImportFileError, columns, read_table
from .safety import hub_token, spreadsheet_cell
from .store import Store

FLAGS = ("empty", "cut_off", "repetition", "failed_check", "near_duplicate", "worse")
FLAG_LABELS = {
    "empty": "empty answer",
    "cut_off": "cut off at max tokens",
    "repetition": "repetition loop",
    "failed_check": "failed principle check",
    "near_duplicate": "near-duplicate",
    "worse": "revision worse than its start",
}
WORSE_REASONS = {
    "loop": "loops where its start did not",
    "lost_content": "lost the start's content",
    "check": "fails a check its start passed",
}
STARTS = ("unprompted", "prompted")
EXPORT_FORMATS = ("messages", "prompt_completion", "csv", "datasets")
NEAR_DUPLICATE_JACCARD = 0.8


# --------------------------------------------------------------------------- flags


def is_repetitive(text: str) -> bool:
    """A generation loop: a short chunk repeated back to back many times, or a few
    word trigrams making up most of a longer answer."""
    if re.search(r"(.{1,40}?)(?:\s*\1){5,}", text, re.S):
        return True
    words = text.lower().split()
    if len(words) < 24:
        return False
    grams = Counter(zip(words, words[1:], words[2:]))
    top = grams.most_common(1)[0][1]
    return top >= 4 and len(grams) / (len(words) - 2) < 0.5


def final_cut_off(sample: dict) -> bool:
    """Whether the text that would be trained on was cut off by the token limit."""
    if sample.get("edited"):
        return False
    for step in reversed(sample.get("chain") or []):
        if step.get("revision"):
            return bool(step.get("cut_off"))
    return bool((sample.get("meta") or {}).get("cut_off"))


def principle_checks(constitution: Constitution) -> list[tuple[str, Check]]:
    return [(p.id, p.check) for p in constitution.principles if p.check is not None]


def start_answer(sample: dict, start: str) -> str:
    """The answer a revision chain starts from: the chosen one, else the other when it is missing."""
    first, other = (
        (sample["unprompted"], sample["prompted"])
        if start == "unprompted"
        else (sample["prompted"], sample["unprompted"])
    )
    return first or other


# Words that say nothing about what an answer is about (the loops of a small model are made of them).
_GENERIC = frozenset(
    """about above after again also answer answers assistant because been before being below
between both could does doing during each from further have having here into itself just more most once only other
over please question questions response rewrite same should some such than that their them then there these they
this those through under until very what when where which while will with would your yours""".split()
)


def content_words(text: str) -> set[str]:
    """What a text is about, roughly: its words of four letters or more, generic ones left out,
    cut to five letters so that "volcano" and "volcanoes" count as one."""
    return {w[:5] for w in re.findall(r"[^\W\d_]{4,}", text.lower()) if w not in _GENERIC}


def revision_worse(start: str, revision: str, checks: list[tuple[str, Check]]) -> list[str]:
    """Why `revision` is worse than the answer `start` it revised ([] when it is not):

    * loop         — it repeats itself (is_repetitive) and the start did not;
    * lost_content — it keeps none of the start's content words (what the answer was about):
                     "The answer to the question is:" for an answer about volcanoes;
    * check        — a principle check that passes on the start fails on it."""
    if not start.strip() or not revision.strip():
        return []
    reasons = []
    if is_repetitive(revision) and not is_repetitive(start):
        reasons.append("loop")
    about = content_words(start)
    if about and not about & content_words(revision):
        reasons.append("lost_content")
    if any(check.passes(start) and not check.passes(revision) for _, check in checks):
        reasons.append("check")
    return reasons


def worse_flags(sample: dict, checks: list[tuple[str, Check]]) -> list[str]:
    """["worse", "worse:<reason>"...] when the revision that became the final text is worse than
    the answer its chain started from; [] for an edited, unrevised or kept-as-is sample."""
    chain = sample.get("chain") or []
    if sample.get("edited") or not chain or not chain[-1].get("revision"):
        return []
    start = start_answer(sample, (sample.get("meta") or {}).get("revise_start", "unprompted"))
    reasons = revision_worse(start, sample.get("final") or "", checks)
    return ["worse"] + [f"worse:{r}" for r in reasons] if reasons else []


def flag_label(flag: str) -> str | None:
    """The badge a flag shows in the review queue (None for one that needs none)."""
    kind, _, detail = flag.partition(":")
    if not detail:
        return FLAG_LABELS.get(flag)
    return f"fails {detail}" if kind == "failed_check" else WORSE_REASONS.get(detail) if kind == "worse" else None


def sample_flags(sample: dict, checks: list[tuple[str, Check]]) -> list[str]:
    """Every flag but near_duplicate (which depends on the other samples)."""
    text = sample.get("final") or ""
    if not text.strip():
        return ["empty"]
    flags = worse_flags(sample, checks)
    if final_cut_off(sample):
        flags.append("cut_off")
    if is_repetitive(text):
        flags.append("repetition")
    failed = [pid for pid, check in checks if not check.passes(text)]
    if failed:
        flags += ["failed_check"] + [f"failed_check:{pid}" for pid in failed]
    return flags


def _shingles(text: str) -> frozenset:
    """Word trigrams; character 4-grams for texts too short (or too wordless) for those."""
    words = re.findall(r"\w+", text.lower())
    if len(words) >= 5:
        return frozenset(zip(words, words[1:], words[2:]))
    s = " ".join(text.lower().split())
    return frozenset(s[i : i + 4] for i in range(max(1, len(s) - 3)))


def near_duplicates(texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> set[int]:
    """Indexes of texts whose word-trigram Jaccard similarity to an earlier text is at
    least `threshold`. Jaccard >= t needs size ratio >= t, so only texts of similar
    size are compared (sorted by size, a sliding window)."""
    sets = [_shingles(t) if t.strip() else None for t in texts]
    order = sorted((i for i, s in enumerate(sets) if s), key=lambda i: len(sets[i]))
    flagged = set()
    for a_pos, a in enumerate(order):
        sa = sets[a]
        for b in order[a_pos + 1 :]:
            sb = sets[b]
            if len(sa) < threshold * len(sb):
                break
            if len(sa & sb) / len(sa | sb) >= threshold:
                flagged.add(max(a, b))
    return flagged


def flag_samples(store: Store, sample_ids: list[int], checks: list[tuple[str, Check]]) -> None:
    """Recompute the per-sample flags of freshly written samples (near_duplicate is kept
    as it was until the next refresh_flags, which compares the whole version)."""
    new = {}
    for sample_id in sample_ids:
        s = store.get_sample(sample_id)
        new[sample_id] = sample_flags(s, checks) + (["near_duplicate"] if "near_duplicate" in s["flags"] else [])
    store.set_sample_flags(new)


def refresh_flags(store: Store, constitution_id: int, owner: str | None = "") -> dict:
    """Recompute the flags of every sample of a constitution version; returns counts per flag."""
    checks = principle_checks(from_row(store.get_constitution(constitution_id)))
    samples = store.list_samples(constitution_id=constitution_id, owner=owner)
    dup = near_duplicates([s["final"] for s in samples])
    new = {s["id"]: sample_flags(s, checks) + (["near_duplicate"] if i in dup else []) for i, s in enumerate(samples)}
    store.set_sample_flags(new)
    counts = Counter(f for flags in new.values() for f in flags if f in FLAGS)
    return {f: counts.get(f, 0) for f in FLAGS}


# --------------------------------------------------------------------------- reviewing


def review(
    store: Store,
    sample_id: int,
    version: int,
    *,
    status: str | None = None,
    final: str | None = None,
    note: str | None = None,
    reviewer: str = "",
) -> dict:
    """One reviewer action, written at once. Raises store.ConflictError when the sample
    changed since `version` was read (another tab, a revise job). Returns the new row."""
    fields = {k: v for k, v in (("status", status), ("final", final), ("note", note)) if v is not None}
    if reviewer:
        fields["reviewer"] = reviewer
    if final is not None:
        current = store.get_sample(sample_id)
        checks = principle_checks(from_row(store.get_constitution(current["constitution_id"])))
        keep = ["near_duplicate"] if "near_duplicate" in current["flags"] else []
        fields["flags"] = sample_flags({**current, "final": final, "edited": True}, checks) + keep
    return store.update_sample(sample_id, version, **fields)


BULK_ACTIONS = {
    "reject_empty": "reject every pending sample flagged empty",
    "reject_flagged": "reject every pending sample with any flag",
    "accept_clean": "accept every pending sample with no flag (passes every check)",
}


BULK_STATUS = {"reject_empty": "rejected", "reject_flagged": "rejected", "accept_clean": "accepted"}
_BULK_PICK = {
    "reject_empty": lambda flags: "empty" in flags,
    "reject_flagged": bool,
    "accept_clean": lambda flags: not flags,
}


def bulk_targets(store: Store, action: str, constitution_id: int, *, owner: str = "", **filters) -> list[int]:
    """Ids of the pending samples of a version a bulk action would change. `filters` are
    list_samples' (set_name, principle, flag, search, min_len, max_len): what the Review tab shows."""
    if action not in BULK_ACTIONS:
        raise ValueError(f"unknown bulk action {action!r}; use one of {', '.join(BULK_ACTIONS)}")
    filters = {**filters, "status": "pending"}
    return [
        s["id"]
        for s in store.list_samples(constitution_id=constitution_id, owner=owner, **filters)
        if _BULK_PICK[action](s["flags"])
    ]


def apply_bulk(store: Store, action: str, ids: list[int], reviewer: str = "") -> int:
    """Give the samples `ids` (still pending) the action's status; returns how many changed."""
    return store.bulk_set_status(ids, BULK_STATUS[action], reviewer=reviewer)


def undo_bulk(store: Store, action: str, ids: list[int], reviewer: str = "") -> int:
    """Put the samples a bulk action changed back to pending (those nobody changed again since)."""
    return store.bulk_set_status(ids, "pending", reviewer=reviewer, from_status=BULK_STATUS[action])


def bulk(store: Store, action: str, constitution_id: int, *, owner: str = "", reviewer: str = "", **filters) -> int:
    """Apply a bulk action to the pending samples of a version under `filters`; returns how many changed."""
    return apply_bulk(store, action, bulk_targets(store, action, constitution_id, owner=owner, **filters), reviewer)


# --------------------------------------------------------------------------- export


def export(
    store: Store,
    constitution_id: int,
    fmt: str,
    path: str | os.PathLike,
    *,
    set_name: str | None = None,
    owner: str = "",
    hub_id: str | None = None,
) -> dict:
    """Write the accepted samples of a version (train prompts only) and a manifest beside them.

    fmt: "messages" (JSONL chat messages), "prompt_completion" (JSONL), "csv", or
    "datasets" (a save_to_disk directory; with `hub_id`, also push_to_hub, which
    needs HF_TOKEN). The student is trained without the constitution, so no export
    carries it in the messages; the manifest records which version made them."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if hub_id and fmt != "datasets":
        raise ValueError("push to the hub needs the datasets format")
    if hub_id and not hub_token():
        raise ValueError("set HF_TOKEN to push to the hub")
    version = store.get_constitution(constitution_id)
    samples = store.list_samples(
        constitution_id=constitution_id, set_name=set_name, status="accepted", split="train", owner=owner
    )
    if not samples:
        raise ValueError("no accepted samples to export: accept some in the review queue first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "sample_id": s["id"],
            "prompt_id": s["prompt_id"],
            "prompt": s["prompt"],
            "completion": s["final"],
            "messages": [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["final"]}],
            "edited": bool(s["edited"]),
            "set": s["set_name"],
        }
        for s in samples
    ]
    if fmt == "messages":
        _write_jsonl(path, ({"messages": r["messages"]} for r in records))
    elif fmt == "prompt_completion":
        _write_jsonl(path, ({"prompt": r["prompt"], "completion": r["completion"]} for r in records))
    elif fmt == "csv":
        cols = ["sample_id", "prompt_id", "set", "prompt", "completion", "edited"]
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: spreadsheet_cell(v) for k, v in r.items()} for r in records)
    manifest = {
        "format": fmt,
        "path": str(path),
        "constitution_id": constitution_id,
        "constitution_name": version["name"],
        "constitution_hash": version["hash"],
        "set": set_name,
        "counts": {
            **store.count_samples(constitution_id=constitution_id, set_name=set_name, owner=owner),
            "exported": len(records),
        },
        "created_at": time.time(),
    }
    if fmt == "datasets":
        import datasets

        ds = datasets.Dataset.from_list(records)
        ds.info.description = json.dumps({k: v for k, v in manifest.items() if k != "path"})
        ds.save_to_disk(str(path))
        if hub_id:
            ds.push_to_hub(hub_id, token=hub_token())
            manifest["hub_id"] = hub_id
    manifest_path = (
        path / "ctxdistill_export.json" if fmt == "datasets" else path.with_name(path.name + ".manifest.json")
    )
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return {**manifest, "manifest": str(manifest_path)}


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- import (HF recipe datasets)

_ROUND_COLUMN = re.compile(r"^(critic|revision)_(prompt|response)(.*)$")


def recipe_rounds(cols: list[str]) -> list[str]:
    """Column suffixes of the critique/revision rounds ("" for critic_prompt, "_2" for critic_prompt_2, ...)."""
    suffixes = sorted({m[3] for c in cols if (m := _ROUND_COLUMN.match(c))}, key=lambda s: (len(s), s))
    return [s for s in suffixes if {f"critic_response{s}", f"revision_response{s}"} <= set(cols)]


def import_recipe_dataset(
    store: Store,
    source: str | os.PathLike,
    set_name: str,
    *,
    name: str | None = None,
    fmt: str | None = None,
    owner: str = "",
) -> dict:
    """Bring a dataset with the HF constitutional-AI recipe's columns (init_prompt,
    init_response, critic_*, revision_*) into the workbench, all or nothing.

    The distinct (critic_prompt, revision_prompt) pairs become the principles of a new
    constitution version named `name` (default: the set name); init_response is the
    starting (unprompted) answer, each critique/revision round a chain step, and the
    last revision the final text. Prompts land in the train split."""
    label = Path(str(source)).name
    records = read_table(source, fmt)
    if not records:
        raise ImportFileError(f"{label} holds no records")
    cols = columns(records)
    missing = [c for c in ("init_prompt", "init_response") if c not in cols]
    if missing:
        raise ImportFileError(
            f"{label} has no {' or '.join(missing)} column; a recipe dataset has init_prompt, "
            f"init_response, critic_* and revision_* columns (it has: {', '.join(cols)})"
        )
    rounds = recipe_rounds(cols)
    pairs: dict[tuple[str, str], str] = {}
    rows = []
    for n, r in enumerate(records, 1):
        prompt = str(r.get("init_prompt") or "").strip()
        if not prompt:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ImportFileError(
                f"{label} record {n}: the prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}"
            )
        chain = []
        for s in rounds:
            critic, revision = str(r.get(f"critic_prompt{s}") or ""), str(r.get(f"revision_prompt{s}") or "")
            pid = pairs.setdefault((critic, revision), f"p{len(pairs) + 1}")
            chain.append(
                {
                    "principle": pid,
                    "critique_request": critic,
                    "critique": str(r.get(f"critic_response{s}") or ""),
                    "revision_request": revision,
                    "revision": str(r.get(f"revision_response{s}") or ""),
                }
            )
        rows.append((prompt, str(r.get("init_response") or ""), chain))
    if not rows:
        raise ImportFileError(f"{label}: every init_prompt is empty; nothing to import")
    recipe = {
        "constitutions": [{"critic": c, "revision": v} for c, v in pairs]
        or [{"critic": "Imported without critique rounds.", "revision": ""}]
    }
    constitution = from_hf_recipe(recipe, name=name or set_name)
    with store.transaction():
        store.add_prompts(
            set_name, [{"text": p, "split": "train"} for p, _, _ in rows], source=str(source), owner=owner
        )
        cid = store.save_constitution(
            constitution.name,
            to_dict(constitution),
            content_hash(constitution),
            message=f"imported from {label}",
            owner=owner,
        )
        ids = {p["text"]: p["id"] for p in store.get_prompts(set_name, owner=owner)}
        seen: Counter = Counter()
        items = []
        for prompt, init, chain in rows:
            pid = ids[prompt]
            items.append(
                {
                    "prompt_id": pid,
                    "constitution_id": cid,
                    "idx": seen[pid],
                    "unprompted": init,
                    "chain": chain,
                    "meta": {"source": str(source), "start": "unprompted"},
                }
            )
            seen[pid] += 1
        store.upsert_samples(items)
    flags = refresh_flags(store, cid, owner=owner)
    return {
        "set": set_name,
        "constitution_id": cid,
        "principles": len(constitution.principles),
        "samples": len(items),
        "rounds": len(rounds),
        "flags": flags,
    }
